"""Alembic environment and versions of the cohort database (applied automatically on open)."""
