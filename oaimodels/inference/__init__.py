"""Using a trained run: predicting new scans, explaining scores, and the run as something to apply."""
