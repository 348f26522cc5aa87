"""Cohort layer of the `oai` toolkit: database, OAI readers, ingest, labels, splits, queries,
imaging and the volume store. This package never imports torch."""

__version__ = "0.1.0"
