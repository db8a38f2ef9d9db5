"""Atomic writes: a reader sees either the old file or the complete new one, never half of it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A handle on a temporary file in ``path``'s own directory that becomes ``path`` when the block ends:
    flushed, fsynced, given the usual permissions, renamed over ``path`` (``os.replace``, atomic on one file
    system) and the directory entry fsynced. If the block or any of these steps fails (a full disk, say),
    the temporary file is removed, ``path`` keeps its old content, and an OSError names ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None:
            # name the file that could not be written (write() names none, a rename the temporary file)
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (where the platform allows opening a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory and ``os.replace``."""
    with atomic_output(path, "w") as handle:
        handle.write(text)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(row, default=str) + "\n" for row in rows))


def publish_directory(tmp: str | Path, final: str | Path) -> None:
    """Move a finished directory into place (atomic rename), or drop it if another process won."""
    try:
        Path(tmp).replace(final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_save_npy(path: str | Path, array: Any) -> Path:
    """``np.save`` through :func:`atomic_output` (the binary twin of :func:`atomic_write_text`)."""
    import numpy as np

    with atomic_output(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    return Path(path)
