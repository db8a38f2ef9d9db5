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
import subprocess
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


def processes_of_uid(uid: int, living_only: bool = True) -> list[int]:
    """Pids whose real uid is ``uid`` (from /proc); with ``living_only``, zombies left out (they are dead
    already, though the process limit counts them until they are reaped)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", encoding="ascii", errors="replace") as handle:
                for line in handle:
                    if living_only and line.startswith("State:") and line.split()[1] in ("Z", "X"):
                        break
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            found.append(int(entry.name))
                        break
        except (OSError, ValueError, IndexError):
            continue
    return found


def kill_uid(uid: int, timeout_s: float = 2.0, spare: int | None = None) -> None:
    """SIGKILL every process of ``uid`` (but ``spare``) until none is left (uid level: catches daemons that
    left the process group)."""
    deadline = time.monotonic() + timeout_s
    while True:
        pids = [pid for pid in processes_of_uid(uid) if pid != spare]
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
    for pid in processes_of_uid(uid, living_only=False):
        with contextlib.suppress(OSError):
            count += len(os.listdir(f"/proc/{pid}/task"))
    return count


#: World-writable directories that exist on most systems; :func:`shared_writable_dirs` adds the others it
#: finds near the top of the file system.
COMMON_SHARED_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/var/lock", "/dev/mqueue", "/run/shm")
#: Trees of the operating system where no world-writable directory is expected; not searched.
_NOT_SEARCHED = (
    "/proc",
    "/sys",
    "/usr",
    "/boot",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/bin",
    "/sbin",
    "/snap",
)


@functools.cache
def shared_writable_dirs(max_depth: int = 3, max_entries: int = 50_000) -> tuple[str, ...]:
    """World-writable directories a uid without groups could create files in (itself world-writable, every
    directory above it traversable by others): the usual ones and those up to ``max_depth`` levels below
    ``/`` (outside the operating system's trees), and below those. Searched once per process."""
    found: list[str] = []
    seen = 0
    stack = [("/", 0)]
    while stack and seen < max_entries:
        path, depth = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError:
            continue
        for entry in entries:
            seen += 1
            try:
                if not entry.is_dir(follow_symlinks=False) or entry.path in _NOT_SEARCHED:
                    continue
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:
                continue
            if not mode & 0o001:  # others cannot traverse it: nothing below is reachable
                continue
            writable = bool(mode & 0o002)
            if writable:
                found.append(entry.path)
            if writable or depth + 1 < max_depth:
                stack.append((entry.path, depth + 1))
    for path in COMMON_SHARED_DIRS:
        real = os.path.realpath(path)
        if os.path.isdir(real) and real not in found:
            found.append(real)
    return tuple(sorted(set(found)))


def remove_files_of_uid(uid: int, directories: Sequence[str] | None = None) -> None:
    """Remove what ``uid`` left in the shared writable directories (uid level, where they are not hidden):
    its entries in each of ``directories`` (default :func:`shared_writable_dirs`), whole."""
    for directory in shared_writable_dirs() if directories is None else directories:
        with contextlib.suppress(OSError):
            for entry in os.scandir(directory):
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_uid != uid:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.unlink(entry.path)


#: /proc/sysvipc file -> the ipcrm(1) option that removes one of its objects by id
_IPC_KINDS = {"shm": "--shmem-id", "sem": "--semaphore-id", "msg": "--queue-id"}


def remove_ipc_of_uid(uid: int) -> None:
    """Remove the SysV shared memory segments, semaphore sets and message queues ``uid`` owns (uid level:
    the host's IPC namespace), with util-linux ``ipcrm``."""
    ipcrm = shutil.which("ipcrm")
    for kind, option in _IPC_KINDS.items():
        try:
            lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()
        except OSError:
            continue
        if not lines:
            continue
        header = lines[0].split()
        if "uid" not in header or len(header) < 2:
            continue
        id_column, uid_column = 1, header.index("uid")
        ids = [
            fields[id_column]
            for fields in (line.split() for line in lines[1:])
            if len(fields) > uid_column and fields[uid_column] == str(uid)
        ]
        if ids and ipcrm:
            command = [ipcrm, *(arg for object_id in ids for arg in (option, object_id))]
            subprocess.run(command, capture_output=True, check=False)
