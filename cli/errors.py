"""Every foreseeable failure as one short line: what went wrong, the path or value, what to do.

``handles_errors`` (oaicli.common) sends every exception here. The toolkit's own ``OAIError`` s
already say all that; this module translates what the operating system, the database drivers,
the environment and PyTorch raise, so that no command ends in a raw traceback. An exception
nobody foresaw is still one line (type and message) plus how to get the traceback:
``--debug`` or ``OAI_DEBUG=1``.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
from dataclasses import dataclass

from oaicohort.errors import OAIError

DEBUG_ENV = "OAI_DEBUG"


@dataclass(frozen=True)
class Failure:
    message: str
    exit_code: int = 1


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def printable(text: str) -> str:
    """``text`` safe to print: a file name that is not UTF-8 (kept by Python as surrogate escapes)
    is shown with its raw bytes as ``\\xNN`` instead of crashing the terminal output."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _filename(exc: OSError) -> str:
    name = exc.filename if exc.filename is not None else ""
    name = os.fsdecode(name) if isinstance(name, bytes) else str(name)
    if exc.filename2 is not None:
        name += f" -> {os.fsdecode(exc.filename2) if isinstance(exc.filename2, bytes) else exc.filename2}"
    return name or "(file not named by the system)"


_OS_ERRORS: dict[int, str] = {
    errno.ENOENT: "no such file or directory; check the path (is the disk mounted?)",
    errno.EISDIR: "is a directory, where a file was expected",
    errno.ENOTDIR: "a part of this path is a file, not a directory",
    errno.ENOSPC: "no space left on the device; free some space and run the command again "
    "(what was being written was not committed)",
    errno.EDQUOT: "disk quota exceeded; free some space and run the command again",
    errno.ENAMETOOLONG: "file name too long for this file system; choose a shorter path",
    errno.EACCES: "permission denied; check the file's owner and permissions",
    errno.EPERM: "operation not permitted; check the file's owner and permissions",
    errno.EROFS: "read-only file system; choose a writable location",
    errno.ELOOP: "too many levels of symbolic links (a link loop)",
    errno.EEXIST: "already exists",
    errno.EIO: "input/output error: the disk or network file system failed; check it and retry",
}


def _os_failure(exc: OSError) -> Failure:
    reason = _OS_ERRORS.get(exc.errno or -1, exc.strerror or str(exc))
    return Failure(f"{_filename(exc)}: {reason}")


def _database_failure(exc: Exception) -> Failure | None:
    """SQLAlchemy / driver errors: a damaged or foreign file, read-only, an unreachable server."""
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    if not isinstance(exc, SQLAlchemyError):
        return None
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()[0] if str(orig or exc).strip() else ""
    low = text.lower()
    if "file is not a database" in low or "not a database" in low:
        return Failure(f"the database file is not a SQLite database ({text}); check --db / OAI_DB")
    if "malformed" in low or "disk image" in low:
        return Failure(f"the database file is damaged ({text}); restore it from a backup")
    if "readonly database" in low or "read-only" in low or "read only" in low:
        return Failure(f"the database is read-only ({text}); use a writable copy or location")
    if "unable to open database file" in low:
        return Failure(f"cannot open the database file ({text}); check that its folder exists and is writable")
    if "timeout" in low or "timed out" in low or "canceling statement" in low or low == "interrupted":
        return Failure(
            f"the database server did not answer in time ({text}); check the server, or raise "
            "OAI_DB_CONNECT_TIMEOUT / OAI_DB_STATEMENT_TIMEOUT"
        )
    if "connection" in low or "could not connect" in low or "server closed" in low:
        return Failure(f"cannot reach the database server ({text}); check the URL and that the server runs")
    if isinstance(exc, DBAPIError):
        return Failure(f"database error: {text}")
    return Failure(f"database error: {type(exc).__name__}: {text}")


def _checkpoint_failure(exc: BaseException) -> Failure | None:
    """PyTorch's errors on loading a damaged, foreign or mismatched checkpoint."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "weights_only" in text.replace(" ", "_").lower():
        return Failure("checkpoint refused: not a plain state dict (it contains code or other objects)")
    if isinstance(exc, pickle.UnpicklingError | EOFError):
        return Failure("checkpoint unreadable: truncated or not a checkpoint; train the run again")
    if isinstance(exc, RuntimeError):
        if "PytorchStreamReader" in text or "central directory" in text or "zip archive" in text:
            return Failure("checkpoint unreadable: truncated or not a checkpoint; train the run again")
        if "Error(s) in loading state_dict" in text:
            first = next((ln.strip() for ln in text.splitlines()[1:] if ln.strip()), "")
            return Failure(f"checkpoint does not fit its model (wrong shapes: {first[:200]})")
    return None


def translate(exc: BaseException) -> Failure:
    """One line and an exit code for any exception a command lets escape."""
    if isinstance(exc, OAIError):
        return Failure(str(exc), exc.exit_code)
    database = _database_failure(exc) if isinstance(exc, Exception) else None
    if database is not None:
        return database
    checkpoint = _checkpoint_failure(exc)
    if checkpoint is not None:
        return checkpoint
    if isinstance(exc, OSError):
        return _os_failure(exc)
    if isinstance(exc, json.JSONDecodeError):
        return Failure(f"invalid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}; the file is damaged")
    if isinstance(exc, UnicodeEncodeError) and "surrogates" in str(exc):
        shown = printable(exc.object) if isinstance(exc.object, str) else "a name"
        return Failure(f"{shown}: a file or folder name that is not valid UTF-8; rename it (names are stored as UTF-8)")
    if isinstance(exc, UnicodeError):
        return Failure(f"text that is not valid UTF-8: {exc}")
    if isinstance(exc, KeyError) and str(exc).strip("'\"").startswith("unknown model"):
        return Failure(str(exc).strip("'\""))
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()):
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "no detail"
        return Failure(
            f"out of memory ({first}); try fewer --workers, a smaller --batch-size or --loader workers "
            "(run with --debug for where it happened)"
        )
    return Failure(f"unexpected error: {type(exc).__name__}: {exc} (run with --debug or OAI_DEBUG=1 for the traceback)")
