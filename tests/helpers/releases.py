"""Synthetic releases shared by tests: the folder names of a release, and builders the session
fixtures of tests/conftest.py call."""

from __future__ import annotations

ASCII = "OAICompleteData_ASCII"
