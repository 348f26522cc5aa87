"""Errors the toolkit raises for bad user input; the CLI turns them into messages and exit codes."""

from __future__ import annotations

from pathlib import Path


class OAIError(Exception):
    """Base class of the toolkit's own failures (bad input, inconsistent state)."""

    exit_code = 1


class InputFileError(OAIError):
    """A user-supplied file is unreadable or malformed; names the file, and the line/column if known."""

    def __init__(
        self,
        path: Path | str,
        message: str,
        *,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.line = line
        self.column = column
        self.reason = message
        where = str(self.path)
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {message}")


class DatabaseStateError(OAIError):
    """The database does not hold what a command needs (e.g. labels before ingest)."""


class ConcurrentWriteError(OAIError):
    """Another process holds the write lock for the same kind of work."""

    exit_code = 3
