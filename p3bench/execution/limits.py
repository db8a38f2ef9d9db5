"""Resource limits for one sandboxed process tree, and how they become ``setrlimit`` values."""

from __future__ import annotations

import math
import resource
from dataclasses import dataclass, fields

from p3bench.errors import ConfigError

MiB = 1 << 20


@dataclass(frozen=True)
class SandboxLimits:
    """Limits for one sandboxed run.

    - ``timeout_s``: wall-clock limit of the whole run; on expiry the process group (and, where in force,
      the PID namespace, cgroup or sandbox uid) is killed with SIGKILL.
    - ``cpu_s``: CPU seconds per process (``RLIMIT_CPU``); None means ``ceil(timeout_s) + 1``.
    - ``memory_mb``: address space per process (``RLIMIT_AS``) and, with cgroups, memory of the whole tree.
    - ``file_size_mb``: largest file a process may write (``RLIMIT_FSIZE``).
    - ``max_processes``: processes and threads of the sandbox user (``RLIMIT_NPROC``; a cgroup ``pids.max``
      where cgroups are in force).
    - ``open_files``: file descriptors per process (``RLIMIT_NOFILE``).
    - ``output_bytes``: bytes of stdout (and, separately, stderr) kept; more stdout ends the run.
    - ``workdir_mb``: size of the fresh working directory (a tmpfs where mount namespaces are in force).
    """

    timeout_s: float = 10.0
    cpu_s: float | None = None
    memory_mb: int = 2048
    file_size_mb: int = 16
    max_processes: int = 16
    open_files: int = 256
    output_bytes: int = 1 * MiB
    workdir_mb: int = 64

    def __post_init__(self) -> None:
        _check_number("timeout_s", self.timeout_s, 0.01, 86_400)
        if self.cpu_s is not None:
            _check_number("cpu_s", self.cpu_s, 1, 86_400)
        _check_int("memory_mb", self.memory_mb, 32, 1 << 22)
        _check_int("file_size_mb", self.file_size_mb, 1, 1 << 20)
        _check_int("max_processes", self.max_processes, 2, 100_000)
        _check_int("open_files", self.open_files, 16, 1 << 20)
        _check_int("output_bytes", self.output_bytes, 1024, 1 << 34)
        _check_int("workdir_mb", self.workdir_mb, 1, 1 << 20)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @property
    def cpu_seconds(self) -> int:
        """The ``RLIMIT_CPU`` soft limit in whole seconds."""
        return int(math.ceil(self.cpu_s if self.cpu_s is not None else self.timeout_s + 1))

    def rlimits(self, nproc: int | None = None) -> dict[int, tuple[int, int]]:
        """``{resource.RLIMIT_*: (soft, hard)}``, set by the sandbox's entry point before the program runs;
        ``nproc`` overrides the process count (see isolation)."""
        memory = self.memory_mb * MiB
        limits = {
            resource.RLIMIT_CPU: (self.cpu_seconds, self.cpu_seconds + 1),
            resource.RLIMIT_AS: (memory, memory),
            resource.RLIMIT_FSIZE: (self.file_size_mb * MiB, self.file_size_mb * MiB),
            resource.RLIMIT_NOFILE: (self.open_files, self.open_files),
            resource.RLIMIT_CORE: (0, 0),
        }
        processes = self.max_processes if nproc is None else nproc
        limits[resource.RLIMIT_NPROC] = (processes, processes)
        return {key: _within_hard_limit(key, value) for key, value in limits.items()}


def _within_hard_limit(key: int, value: tuple[int, int]) -> tuple[int, int]:
    """Lower ``value`` to this process's hard limit, which an unprivileged process cannot raise."""
    _, hard_now = resource.getrlimit(key)
    if hard_now == resource.RLIM_INFINITY:
        return value
    soft, hard = value
    return min(soft, hard_now), min(hard, hard_now)


def _check_number(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"sandbox limit {name}={value!r} is invalid: expected a number in [{low}, {high}]")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(
            f"sandbox limit {name}={value!r} is invalid: expected an integer in [{low}, {high}]"
        )
