"""Unprivileged uids for sandboxed runs, and finding, killing and cleaning up after the processes of a uid.

As root, ``RLIMIT_NPROC`` binds nobody, so the root isolation levels run each program as a uid of its own
from ``UID_BASE .. UID_BASE + UID_SPAN - 1`` (skipping uids with an account). A run holds its uid through an
``flock`` on a file in a root-only directory, so two live runs, in one process or several, never share one.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import pwd
import random
import shutil
import signal
import stat
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

UID_BASE = 100_000
UID_SPAN = 4096


#: Where the uid locks live: one fixed path for every process of this machine (never ``TMPDIR``, which two
#: processes may set differently and so hand out the same uid twice); the second only where /run is not
#: writable.
LOCK_DIRS = ("/run/p3bench-sandbox-uids", "/tmp/p3bench-sandbox-uids")


def uid_lock_dir() -> Path:
    """The uid lock directory: under /run where it can be written, else the fixed fallback under /tmp."""
    first, fallback = (Path(p) for p in LOCK_DIRS)
    if first.is_dir() or os.access(first.parent, os.W_OK | os.X_OK):
        return first
    return fallback


@contextlib.contextmanager
def run_uid(drop_privileges: bool) -> Iterator[int | None]:
    """A uid no other live run holds (an ``flock`` per uid), or None when runs keep the current user."""
    if not drop_privileges:
        yield None
        return
    lock_dir = uid_lock_dir()
    lock_dir.mkdir(mode=0o700, exist_ok=True)
    status = os.lstat(lock_dir)
    if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.geteuid() or status.st_mode & 0o077:
        raise RuntimeError(
            f"sandbox uid lock directory {lock_dir} is not a private directory of uid {os.geteuid()}: "
            "expected mode 0700 and this owner (remove it to have it recreated)"
        )
    start = random.randrange(UID_SPAN)
    for step in range(UID_SPAN):
        uid = UID_BASE + (start + step) % UID_SPAN
        if _uid_has_account(uid):
            continue
        fd = os.open(lock_dir / f"{uid}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield uid
        finally:
            os.close(fd)
        return
    raise RuntimeError(f"all {UID_SPAN} sandbox uids from {UID_BASE} are in use")


@functools.cache
def _uid_has_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def processes_of_uid(uid: int) -> list[int]:
    """Pids whose real uid is ``uid`` (from /proc)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", encoding="ascii", errors="replace") as handle:
                for line in handle:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            found.append(int(entry.name))
                        break
        except (OSError, ValueError):
            continue
    return found


def kill_uid(uid: int, timeout_s: float = 2.0) -> None:
    """SIGKILL every process of ``uid`` until none is left (uid level: catches daemons that left the
    process group)."""
    deadline = time.monotonic() + timeout_s
    while True:
        pids = processes_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            logger.warning("processes of sandbox uid %d survive SIGKILL: %s", uid, pids)
            return
        time.sleep(0.005)


def user_process_count() -> int:
    """How many processes and threads this user has now (``RLIMIT_NPROC`` counts them all)."""
    uid, count = os.getuid(), 0
    for pid in processes_of_uid(uid):
        with contextlib.suppress(OSError):
            count += len(os.listdir(f"/proc/{pid}/task"))
    return count


def remove_files_of_uid(uid: int, directories: Sequence[str] = ("/tmp", "/var/tmp", "/dev/shm")) -> None:
    """Remove what ``uid`` left in the shared writable directories (uid level, where they are not hidden)."""
    for directory in directories:
        with contextlib.suppress(OSError):
            for entry in os.scandir(directory):
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_uid != uid:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.unlink(entry.path)
