"""Per-run cgroups: one memory cap on a whole sandboxed process tree (and, with cgroup v2, a pids cap).

Used where this process may create child cgroups: root with a writable cgroup v1 ``memory`` hierarchy, or
a cgroup v2 directory that already delegates the ``memory`` and ``pids`` controllers. The sandbox's entry
point joins the cgroup (through a descriptor of :attr:`RunCgroup.join_file` the host opened) before the
program runs, so every descendant is counted. With v1 it joins through ``tasks``, moving only its own
(single) thread: that skips the kernel's lock on whole thread groups, whose write side waits for an RCU
grace period (milliseconds per run: ``benchmarks/sandbox_cost.py`` times both); v2 has no such file for a
domain cgroup, so there a join costs that wait. A run joins one cgroup only: with v1 the process count is left to
``RLIMIT_NPROC`` on the run's own uid, which the root levels enforce.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_counter = itertools.count()


@dataclass(frozen=True)
class CgroupSupport:
    """Where run cgroups are created: ``version`` 1 (separate hierarchies) or 2 (one directory)."""

    version: int
    parent: Path

    def describe(self) -> str:
        if self.version == 2:
            return f"cgroup v2 memory+pids ({self.parent})"
        return f"cgroup v1 memory ({self.parent})"


def _own_cgroups() -> dict[str, str]:
    """Controller (or ``""`` for the v2 hierarchy) -> this process's cgroup path."""
    owned: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for name in controllers.split(",") if controllers else [""]:
            owned[name] = path
    return owned


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """``(fstype, root, mountpoint, super_options)`` of the cgroup mounts in /proc/self/mountinfo."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        head, _, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if len(fields) < 5 or len(rest) < 3 or rest[0] not in ("cgroup", "cgroup2"):
            continue
        found.append((rest[0], fields[3], fields[4], set(rest[2].split(","))))
    return found


def _directory(mountpoint: str, root: str, path: str) -> Path | None:
    if not (path == root or path.startswith(root.rstrip("/") + "/")):
        return None
    relative = path[len(root) :].lstrip("/")
    directory = Path(mountpoint) / relative
    return directory if directory.is_dir() else None


def _locate() -> CgroupSupport | None:
    owned, mounts = _own_cgroups(), _mounts()
    for fstype, root, mountpoint, options in mounts:
        if fstype == "cgroup" and "memory" in options and "memory" in owned:
            directory = _directory(mountpoint, root, owned["memory"])
            if directory is not None:
                return CgroupSupport(1, directory)
    for fstype, root, mountpoint, _ in mounts:
        if fstype == "cgroup2" and "" in owned:
            directory = _directory(mountpoint, root, owned[""])
            if directory is None:
                continue
            try:
                delegated = set((directory / "cgroup.subtree_control").read_text().split())
            except OSError:
                continue
            if {"memory", "pids"} <= delegated:
                return CgroupSupport(2, directory)
    return None


def detect_cgroups() -> tuple[CgroupSupport | None, str]:
    """The usable cgroup setup and a one-line note; creating and removing a probe cgroup must succeed."""
    if not Path("/proc/self/cgroup").exists():
        return None, "no /proc/self/cgroup (not Linux)"
    try:
        support = _locate()
    except OSError as err:
        return None, f"cgroups unreadable ({err})"
    if support is None:
        return None, "no cgroup v1 memory hierarchy or delegated cgroup v2 memory+pids"
    try:
        probe = RunCgroup(support, memory_bytes=64 << 20, max_pids=8, name=f"p3bench-probe-{os.getpid()}")
        probe.remove()
    except OSError as err:
        return None, f"cannot create cgroups under {support.parent} ({err.strerror or err})"
    return support, support.describe()


class RunCgroup:
    """The cgroup of one run: created with limits, joined by the run's entry point, then removed."""

    def __init__(
        self, support: CgroupSupport, *, memory_bytes: int, max_pids: int, name: str | None = None
    ) -> None:
        self.support = support
        self.directory = support.parent / (name or f"p3bench-{os.getpid()}-{next(_counter)}")
        self.directory.mkdir()
        try:
            if support.version == 1:
                _write(self.directory / "memory.limit_in_bytes", memory_bytes)
                _write(self.directory / "memory.memsw.limit_in_bytes", memory_bytes, optional=True)
            else:
                _write(self.directory / "memory.max", memory_bytes)
                _write(self.directory / "memory.swap.max", 0, optional=True)
                _write(self.directory / "pids.max", max_pids)
        except OSError:
            self.directory.rmdir()
            raise

    @property
    def join_file(self) -> str:
        """The file a process writes ``0`` to in order to join: v1 ``tasks`` (the writing thread only,
        without waiting for an RCU grace period), v2 ``cgroup.procs``."""
        return str(self.directory / ("tasks" if self.support.version == 1 else "cgroup.procs"))

    def oom_kills(self) -> int:
        """How many processes the kernel killed for exceeding the memory cap (0 when unknown)."""
        name = "memory.oom_control" if self.support.version == 1 else "memory.events"
        try:
            for line in (self.directory / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def pids(self) -> set[int]:
        try:
            return {int(p) for p in (self.directory / "cgroup.procs").read_text().split()}
        except (OSError, ValueError):
            return set()

    def remove(self, timeout_s: float = 5.0) -> None:
        """SIGKILL whatever is left in the cgroup, wait for it to go, and remove the directory."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = self.pids()
            if not remaining:
                break
            for pid in remaining:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                logger.warning(
                    "sandbox cgroup %s still holds processes %s", self.directory, sorted(remaining)
                )
                break
            time.sleep(0.01)
        for _ in range(50):
            try:
                self.directory.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)
        logger.warning("could not remove sandbox cgroup %s", self.directory)


def _write(path: Path, value: int, optional: bool = False) -> None:
    try:
        path.write_text(str(value))
    except OSError:
        if not optional:
            raise
