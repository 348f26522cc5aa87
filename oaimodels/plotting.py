"""The one way this package gets matplotlib: imported on first use (a run that draws nothing
never pays for it) with the file-only Agg backend, so plots work on servers without a display."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
