"""Errors that reach the user as one line: the bad value and what was expected; and the command's exit codes.

Exit codes of ``p3bench`` (docs/results.md): 0 the run (or every sweep job) finished; 1 an unexpected error
(a bug: the traceback is printed); 2 a user error (bad input, a damaged or mismatched checkpoint, a full or
unwritable disk: one line on stderr); 130 interrupted by Ctrl-C (SIGINT) or SIGTERM.
"""

from __future__ import annotations

import errno

EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class P3BenchError(Exception):
    """A user-facing error. Its message is one line naming the bad value and what was expected."""


class ConfigError(P3BenchError):
    """A configuration value is invalid (unknown name, out-of-range budget, ...)."""


class DataError(P3BenchError):
    """A data file or record is malformed or missing required fields."""


class ModelLoadError(P3BenchError):
    """A model or tokenizer cannot be loaded (for example offline and not cached)."""


class CheckpointError(P3BenchError):
    """A checkpoint cannot be resumed from: missing, damaged, or written by a run with other settings."""


class ChecksFailed(BaseException):
    """Carries the error of a check made before the run directory exists out of a Hydra callback (Hydra
    turns an Exception raised in a callback into a warning and goes on to create the run directory)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class Interrupted(KeyboardInterrupt):
    """The run was stopped by SIGINT (Ctrl-C) or SIGTERM; ``signal_name`` says which."""

    #: the signal the command received last (Lightning turns a caught interrupt into ``sys.exit(1)``)
    last_signal = "SIGINT"

    def __init__(self, signal_name: str = "SIGINT") -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


#: file-system refusals that come from the machine or the user's paths, not from a bug: one line, exit 2
_USER_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a path component is not a directory",
    errno.EISDIR: "is a directory",
    errno.ENAMETOOLONG: "file name too long",
}


def file_system_error_message(exc: OSError) -> str | None:
    """One line for an OSError that says the disk is full, read-only or not ours to write (the file and
    what went wrong), or None for any other OSError."""
    reason = _USER_ERRNOS.get(exc.errno) if exc.errno is not None else None
    if reason is None:
        return None
    where = f"{exc.filename}: " if exc.filename else ""
    code = errno.errorcode.get(exc.errno, str(exc.errno))
    advice = (
        "free some space (a run with checkpoints resumes with ckpt_path=last)"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        else "choose a writable place (hydra.run.dir=..., paths.cache_dir=...)"
    )
    return f"{where}{reason} ({code}): {advice}"


def user_error_message(exc: BaseException) -> str | None:
    """The one-line message of an error that is the user's or the machine's to fix, else None (a bug)."""
    if isinstance(exc, P3BenchError):
        return " ".join(str(exc).split())
    if isinstance(exc, OSError):
        return file_system_error_message(exc)
    return None
