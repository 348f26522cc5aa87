"""Settings read from environment variables, checked: a bad value names the variable and what it takes."""

from __future__ import annotations

import math
import os

from oaicohort.errors import OAIError


class EnvironmentValueError(OAIError):
    """An ``OAI_*`` environment variable holds a value the toolkit cannot use."""


def env_seconds(name: str, default: float, *, allow_zero: bool = False) -> float:
    """A positive, finite number of seconds from ``$name`` (``default`` when unset or blank)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        kind = "a number of seconds >= 0" if allow_zero else "a number of seconds > 0"
        raise EnvironmentValueError(f"{name}={raw!r}: expected {kind} (default {default:g}); fix or unset it")
    return value
