"""Cohort logic over the database: label definitions, labels, splits and queries."""
