"""Files and folders the toolkit creates are never world-writable, whatever the caller's umask:
a shared cohort database or volume store must not be editable by every account on the host."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

WORLD_WRITE = 0o002


def tighten_umask() -> None:
    """Add world-write to the process umask for good (the CLI does this at start)."""
    os.umask(os.umask(0) | WORLD_WRITE)


@contextmanager
def no_world_write() -> Iterator[None]:
    """Within the block, files and folders are created without world-write permission (the
    umask is process-wide: for the main thread's long writing calls, not for libraries' threads
    that outlive the block)."""
    old = os.umask(0)
    os.umask(old | WORLD_WRITE)
    try:
        yield
    finally:
        os.umask(old)
