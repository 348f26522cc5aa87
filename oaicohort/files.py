"""Files and folders the toolkit creates: never world-writable, whatever the caller's umask (a
shared cohort database or volume store must not be editable by every account on the host), and
written atomically.

A file is written under a temporary name beside it (``.NAME.tmpPID``, ``atomic_path``) and
renamed into place; a folder of outputs is built beside its target (``.NAME.partial-PID-XXXX``,
``staged_folder``). Whatever the outcome (an exception, Ctrl-C) the temporary is removed; one
left by a process that was killed (SIGKILL, a power cut) is removed by the next command that
writes into that folder (``clean_leftovers``: only those whose process is gone).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

log = logging.getLogger(__name__)

WORLD_WRITE = 0o002
# temporaries of this module and of the store's creation, with the pid of the process writing them
_LEFTOVER = re.compile(r"^\..+\.(?:tmp(?P<a>\d+)(?:\..*)?|partial-(?P<b>\d+)-.*|creating-(?P<c>\d+)-.*)$")
_cleaned: set[Path] = set()


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


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A new folder beside ``out`` to write a command's output into. When the block ends well its
    entries replace those of the same name in ``out`` (created if missing); when it fails the
    folder is removed and ``out`` is as it was: a failed command leaves no half-written output."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out.parent)
    if out.is_dir():
        clean_leftovers(out)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~(umask | WORLD_WRITE))  # mkdtemp makes it 0700
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if not out.exists():
        os.replace(stage, out)
        return
    try:
        for entry in stage.iterdir():
            target = out / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another account's live process
        return True
    return True


def clean_leftovers(folder: Path | str) -> list[Path]:
    """Remove the temporaries in ``folder`` left by processes that no longer run (a killed
    write); returns what was removed. Those of live processes (a concurrent writer) are kept."""
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _LEFTOVER.match(entry.name)
        if match is None:
            continue
        pid = int(match.group("a") or match.group("b") or match.group("c"))
        if _alive(pid):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:  # not ours to remove: leave it, say so
            log.warning("%s: a temporary left by a killed process (pid %d) cannot be removed: %s", path, pid, exc)
            continue
        log.info("removed %s, left by a killed process (pid %d)", path, pid)
        removed.append(path)
    return removed


def _clean_once(folder: Path) -> None:
    key = folder.absolute()
    if key not in _cleaned:
        clean_leftovers(folder)
        _cleaned.add(key)


def temporary_name(path: Path, suffix: str = "") -> Path:
    """The temporary name ``path`` is written under (``.NAME.tmpPID`` + ``suffix``)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")


@contextmanager
def atomic_path(path: Path | str, *, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` to write; renamed onto ``path`` when the block ends well,
    removed whatever else happens. ``suffix`` keeps an extension a writer needs (``.nii.gz``)."""
    path = Path(path)
    _clean_once(path.parent)
    tmp = temporary_name(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None or Path(os.fsdecode(exc.filename)) != tmp:
            raise
        # say the file the user named, not the temporary (permission denied, disk full ...)
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    finally:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (no reader ever sees half of it)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def folder_lock(folder: Path | str, busy: str) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``folder`` (created if missing) for the block; another
    process holding it raises ``ConcurrentWriteError(busy)`` (exit 3) at once. The kernel drops
    the lock when its holder dies, so a killed holder never blocks the next command."""
    import fcntl

    from oaicohort.errors import ConcurrentWriteError

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConcurrentWriteError(busy) from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
