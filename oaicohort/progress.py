"""Progress reporting from library code without depending on a terminal.

Library functions take an optional ``progress`` callback; the CLI adapts it to a Rich progress
bar (see ``cli.common.rich_progress``), tests and scripts can pass nothing.
"""

from __future__ import annotations

from typing import Protocol


class ProgressCallback(Protocol):
    def __call__(self, task: str, completed: float, total: float | None) -> None:
        """Report that ``completed`` of ``total`` units of ``task`` are done."""


def no_progress(task: str, completed: float, total: float | None) -> None:
    """The default callback: report nothing."""
