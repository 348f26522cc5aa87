"""Evaluating a run's fold ensemble on the held-out site: metrics, plots, calibration and reports."""
