"""Stopping promptly on SIGINT and SIGTERM, worker processes included.

SIGTERM (``kill``, a batch scheduler, ``systemctl stop``) is turned into ``Terminated``, a
``KeyboardInterrupt``, so that a terminated command unwinds like an interrupted one: its
transaction rolls back, its ingest run is marked interrupted, and its worker processes are
stopped (``stop_pool``) instead of being left to finish or orphaned.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def install_sigterm_handler() -> None:
    """SIGTERM raises ``Terminated`` in the main thread (call once, from the main thread)."""
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (e.g. inside a test runner's worker thread)
        log.debug("SIGTERM handler not installed: not the main thread")


def stop_pool(pool: Any) -> None:
    """Terminate a ``ProcessPoolExecutor``'s worker processes now and release the pool.

    ``shutdown(cancel_futures=True)`` alone lets running tasks finish (a DICOM series can take
    seconds); on an interrupt the work is thrown away anyway, so the workers are terminated."""
    processes = getattr(pool, "_processes", None) or {}
    # shutdown(wait=False) forgets the pool's manager thread without joining it; one still
    # running at interpreter exit races concurrent.futures' atexit hook on Python 3.11 (a "Bad
    # file descriptor" traceback on the user's terminal after Ctrl-C), so it is joined below
    manager = getattr(pool, "_executor_manager_thread", None)
    for process in list(processes.values()):
        if process.is_alive():
            process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in list(processes.values()):
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
    if manager is not None:
        manager.join(timeout=5)
