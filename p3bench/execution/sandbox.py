"""Run one untrusted program in a sandbox, or many in a small pool.

Each run is a separate process tree started in a new session, inside the isolation that
:func:`~p3bench.execution.isolation.detect_isolation` found (namespaces, an unprivileged uid, cgroups,
``setrlimit`` limits), with a scrubbed environment and a fresh working directory. Standard input is written
and standard output and error are read concurrently (no pipe deadlock); output past
``limits.output_bytes`` ends the run. On the wall-clock timeout the whole process group is killed with
SIGKILL; afterwards the run's cgroup, uid and working directory are cleaned up whatever happened.
"""

from __future__ import annotations

import contextlib
import functools
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, TypeVar

from p3bench.execution.cgroups import RunCgroup
from p3bench.execution.isolation import WORKDIR_IN_NAMESPACE, Isolation, detect_isolation, sandbox_env
from p3bench.execution.limits import MiB, SandboxLimits, apply_rlimits
from p3bench.execution.policy import execution_settings, require_code_execution
from p3bench.execution.uids import kill_uid, remove_files_of_uid, run_uid, user_process_count
from p3bench.utils.progress import progress_bar

T = TypeVar("T")
R = TypeVar("R")

#: Once the main process has exited, how long to keep reading pipes that a leftover child holds open.
EXIT_GRACE_S = 0.05
_CHUNK = 1 << 16


@dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run did. ``returncode`` is negative for a signal (``-9``: killed)."""

    returncode: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool
    output_limited: bool
    stderr_truncated: bool
    stopped_early: bool
    wall_s: float
    oom_kills: int
    mode: str

    @property
    def ok(self) -> bool:
        """Exited by itself with status 0, within the time and output limits."""
        return self.returncode == 0 and not (self.timed_out or self.output_limited or self.stopped_early)


class Sandbox:
    """Runs commands under one :class:`SandboxLimits` in the detected (or forced) isolation.

    Thread safe: :func:`run_many` shares one sandbox between workers. Every run first checks the opt-in
    switch (:func:`~p3bench.execution.policy.require_code_execution`).
    """

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        mode: str | None = None,
        python: str | None = None,
        use_cgroup: bool | None = None,
    ) -> None:
        settings = execution_settings()
        self.limits = limits or settings.limits
        self._mode = mode or settings.mode
        self._python = python
        self._use_cgroup = settings.use_cgroup if use_cgroup is None else use_cgroup

    @functools.cached_property
    def isolation(self) -> Isolation:
        return detect_isolation(self._mode, self._python, self._use_cgroup)

    @property
    def python(self) -> str:
        """The interpreter programs run with (one the sandbox user can execute)."""
        return self.isolation.python

    def report(self) -> dict[str, Any]:
        """:meth:`Isolation.report` with this sandbox's limits."""
        return self.isolation.report(self.limits)

    def run_python(self, code: str, stdin: bytes = b"", **kwargs: Any) -> SandboxResult:
        """Run Python source ``code`` (``python -s -B -c code``) with ``stdin``; see :meth:`run`."""
        return self.run([self.python, "-s", "-B", "-c", code], stdin, **kwargs)

    def run(
        self,
        argv: Sequence[str],
        stdin: bytes = b"",
        *,
        timeout_s: float | None = None,
        on_stdout: Callable[[bytes], bool] | None = None,
        output_bytes: int | None = None,
    ) -> SandboxResult:
        """Run ``argv`` in the sandbox, feeding ``stdin``; ``timeout_s`` and ``output_bytes`` override
        ``limits.timeout_s`` and ``limits.output_bytes`` for this run.

        ``on_stdout(chunk)`` sees each chunk of standard output as it arrives; returning True ends the run
        (``stopped_early``), which lets a caller stop at the first failing test. With it, standard output is
        not kept (the result's ``stdout`` is empty): the callback owns it, and the cap still counts it.
        """
        require_code_execution()
        isolation = self.isolation
        limits = self.limits
        timeout = float(timeout_s if timeout_s is not None else limits.timeout_s)
        started = time.monotonic()
        workdir: str | None = None
        cgroup: RunCgroup | None = None
        with run_uid(isolation.drops_privileges) as uid:
            try:
                if isolation.cgroup is not None:
                    cgroup = RunCgroup(
                        isolation.cgroup,
                        memory_bytes=(limits.memory_mb + limits.workdir_mb) * MiB,
                        max_pids=limits.max_processes + 4,
                    )
                if not isolation.namespaces:
                    workdir = tempfile.mkdtemp(prefix="p3bench-sandbox-", dir=_workdir_base(uid is not None))
                    if uid is not None:
                        os.chown(workdir, uid, uid)
                nproc = (
                    None
                    if (uid is not None or os.geteuid() == 0)
                    else user_process_count() + limits.max_processes
                )
                command = isolation.command(list(argv), limits, uid=uid, cgroup=cgroup, nproc=nproc)
                home = WORKDIR_IN_NAMESPACE if isolation.namespaces else workdir
                preexec = (
                    None if isolation.prlimit else functools.partial(apply_rlimits, limits.rlimits(nproc))
                )
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=workdir or "/",
                    env=sandbox_env(str(home)),
                    start_new_session=True,
                    close_fds=True,
                    preexec_fn=preexec,  # only where prlimit(1) is missing
                )
                try:
                    cap = int(output_bytes if output_bytes is not None else limits.output_bytes)
                    outcome = _communicate(process, stdin, started + timeout, cap, on_stdout)
                finally:
                    _kill_group(process)
                    process.wait()
                    for stream in (process.stdin, process.stdout, process.stderr):
                        if stream is not None:
                            stream.close()
                oom = cgroup.oom_kills() if cgroup is not None else 0
            finally:
                if uid is not None and isolation.mode == "uid":
                    kill_uid(uid)
                    remove_files_of_uid(uid)
                if cgroup is not None:
                    cgroup.remove()
                if workdir is not None:
                    _remove_tree(workdir)
        stdout, stderr, timed_out, limited, truncated, stopped = outcome
        return SandboxResult(
            returncode=process.returncode,
            stdout=stdout,
            stderr=stderr,
            timed_out=timed_out,
            output_limited=limited,
            stderr_truncated=truncated,
            stopped_early=stopped,
            wall_s=time.monotonic() - started,
            oom_kills=oom,
            mode=isolation.mode,
        )


def _communicate(
    process: subprocess.Popen,
    stdin: bytes,
    deadline: float,
    cap: int,
    on_stdout: Callable[[bytes], bool] | None,
) -> tuple[bytes, bytes, bool, bool, bool, bool]:
    """Write ``stdin``, read stdout and stderr (each capped at ``cap``) until the process is done, the
    deadline passes, stdout overflows or ``on_stdout`` asks to stop. Returns ``(stdout, stderr, timed_out,
    output_limited, stderr_truncated, stopped_early)``; the caller kills the process group afterwards."""
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    selector = selectors.DefaultSelector()
    out, err = bytearray(), bytearray()
    out_seen = 0
    timed_out = limited = truncated = stopped = False
    view, position = memoryview(stdin), 0
    if stdin:
        os.set_blocking(process.stdin.fileno(), False)
        selector.register(process.stdin, selectors.EVENT_WRITE)
    else:
        process.stdin.close()
    selector.register(process.stdout, selectors.EVENT_READ)
    selector.register(process.stderr, selectors.EVENT_READ)
    exit_fd = _pidfd(process.pid)
    if exit_fd is not None:
        selector.register(exit_fd, selectors.EVENT_READ)
    exited_at: float | None = None
    try:
        while True:
            now = time.monotonic()
            if exited_at is None and (exit_fd is None and _has_exited(process.pid)):
                exited_at = now
            streams_open = any(
                key.fileobj in (process.stdout, process.stderr) for key in selector.get_map().values()
            )
            if exited_at is not None and (not streams_open or now - exited_at > EXIT_GRACE_S):
                break
            if now >= deadline:
                timed_out = True
                break
            wait = deadline - now
            if exit_fd is None or exited_at is not None:
                wait = min(wait, 0.01)
            for key, _ in selector.select(wait):
                handle = key.fileobj
                if exit_fd is not None and key.fd == exit_fd:
                    exited_at = time.monotonic()
                    selector.unregister(exit_fd)
                elif handle is process.stdin:
                    try:
                        position += os.write(process.stdin.fileno(), view[position : position + _CHUNK])
                    except (BrokenPipeError, ConnectionResetError):
                        position = len(view)
                    if position >= len(view):
                        selector.unregister(process.stdin)
                        process.stdin.close()
                else:
                    chunk = os.read(handle.fileno(), _CHUNK)  # type: ignore[union-attr]
                    if not chunk:
                        selector.unregister(handle)
                    elif handle is process.stdout:
                        room = cap - out_seen
                        if on_stdout is None:  # else the callback owns the output: no second copy here
                            out += chunk[:room]
                        out_seen += min(len(chunk), room)
                        if len(chunk) > room:
                            limited = True
                        elif on_stdout is not None and on_stdout(chunk):
                            stopped = True
                    else:
                        room = cap - len(err)
                        err += chunk[: max(room, 0)]
                        truncated = truncated or len(chunk) > room
            if limited or stopped:
                break
    finally:
        selector.close()
        if exit_fd is not None:
            os.close(exit_fd)
    return bytes(out), bytes(err), timed_out, limited, truncated, stopped


def _pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when ``pid`` exits (Linux 5.3+), else None (then we poll)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _has_exited(pid: int) -> bool:
    """Whether ``pid`` (our child) has exited, without reaping it (so its process group stays valid)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the run's process group (the leader is not yet reaped, so the group id is still ours)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


@functools.cache
def _workdir_base(other_user: bool) -> str | None:
    """Where host working directories go: the temporary directory, unless another uid cannot traverse it
    (a 0700 /tmp), then ``/var/tmp`` or ``/dev/shm`` if they can be; None means the temporary directory."""
    if not other_user:
        return None
    for base in (tempfile.gettempdir(), "/var/tmp", "/dev/shm"):
        path, ok = os.path.realpath(base), True
        while ok and path != "/":
            ok = os.path.isdir(path) and bool(os.stat(path).st_mode & 0o001)
            path = os.path.dirname(path)
        if ok:
            return base
    return None


def _remove_tree(path: str) -> None:
    """Remove a working directory even where the program removed permissions from its own files."""

    def fix_and_retry(function: Callable, target: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(target), 0o700)
            os.chmod(target, 0o700)
        with contextlib.suppress(OSError):
            function(target)

    shutil.rmtree(path, onerror=fix_and_retry)


def run_many(
    function: Callable[[T], R],
    items: Iterable[T],
    workers: int | None = None,
    *,
    progress: bool = False,
    desc: str = "running programs",
) -> list[R]:
    """``[function(item) for item in items]`` on a pool of ``workers`` threads (default: the configured
    ``workers``), results in input order. Each call typically runs one sandboxed program; the threads only
    wait on processes, so two workers keep two programs running. With ``progress``, a bar named ``desc``
    counts the calls as they finish (:func:`p3bench.utils.progress.progress_bar`). The first call that
    raised, in input order, raises here once every call has ended."""
    items = list(items)
    count = workers if workers is not None else execution_settings().workers
    with progress_bar(total=len(items), desc=desc, unit="program", enabled=progress) as bar:
        if count <= 1 or len(items) <= 1:
            results = []
            for item in items:
                results.append(function(item))
                bar.update(1)
            return results
        with ThreadPoolExecutor(max_workers=count, thread_name_prefix="p3bench-sandbox") as pool:
            futures = [pool.submit(function, item) for item in items]
            for _ in as_completed(futures):
                bar.update(1)
            return [future.result() for future in futures]
