"""Synthetic OAI releases: clinical tables and DESS image series in the real formats."""
