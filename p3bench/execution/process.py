"""Run one program inside an isolation level: start it, feed and read it, time it out, end it, clean up.

Standard input is written and standard output and error are read concurrently (no pipe deadlock); output
past the cap ends the run. A run ends when its first process exits, on the wall-clock timeout, or when the
caller stops it. Ending a run that is still going kills the PID 1 of its namespace (the kernel then kills
everything in it, and the namespace's parent reaps it), or every process of its uid, then its process
group; so when :func:`run_in` returns, every process of the run has exited and been reaped: none is left
on the host, not even a zombie (in the ``uid`` level, where the APPS runner has no init in front, the
processes of a killed runner are reaped by the host's init). The run's cgroup, uid and working directory
are cleaned up whatever happened.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from p3bench.execution.cgroups import RunCgroup
from p3bench.execution.launch import Launch, Program, prepare_launch
from p3bench.execution.limits import MiB, SandboxLimits
from p3bench.execution.uids import kill_uid, remove_files_of_uid, remove_ipc_of_uid, run_uid

if TYPE_CHECKING:
    from p3bench.execution.isolation import Isolation

#: Once the main process has exited, how long to keep reading pipes that a leftover child holds open.
EXIT_GRACE_S = 0.05
#: How long a run's first process may take to exit once the run's processes were killed.
END_WAIT_S = 5.0
#: Signals a shell (and bubblewrap) reports as exit status 128 + N.
_MAX_SIGNAL = 64
_CHUNK = 1 << 16


@dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run did. ``returncode`` is negative for a signal (``-9``: killed); in the levels
    with a PID namespace the init reports a signal ``N`` as status ``128 + N``, read back as ``-N``."""

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


def run_in(
    isolation: Isolation,
    limits: SandboxLimits,
    program: Program,
    stdin: bytes = b"",
    *,
    timeout_s: float | None = None,
    on_stdout: Callable[[bytes], bool] | None = None,
    output_bytes: int | None = None,
    init: bool = True,
) -> SandboxResult:
    """Run ``program`` in ``isolation`` under ``limits`` (see :meth:`p3bench.execution.Sandbox.run`)."""
    timeout = float(timeout_s if timeout_s is not None else limits.timeout_s)
    started = time.monotonic()
    workdir: str | None = None
    cgroup: RunCgroup | None = None
    cgroup_fd: int | None = None
    launch: Launch | None = None
    with run_uid(isolation.drops_privileges) as uid:
        try:
            if isolation.cgroup is not None:
                cgroup = RunCgroup(
                    isolation.cgroup,
                    memory_bytes=(limits.memory_mb + limits.workdir_mb) * MiB,
                    max_pids=limits.max_processes + 4,
                )
                cgroup_fd = _high_fd(os.open(cgroup.join_file, os.O_WRONLY | os.O_CLOEXEC))
            if not isolation.namespaces:
                workdir = tempfile.mkdtemp(prefix="p3bench-sandbox-", dir=_workdir_base(uid is not None))
                if uid is not None:
                    os.chown(workdir, uid, uid)
            launch = prepare_launch(
                isolation,
                program,
                limits,
                uid=uid,
                cgroup_fd=cgroup_fd,
                nproc=isolation.nproc(limits, uid),
                workdir=workdir,
                init=init,
            )
            try:
                process = subprocess.Popen(
                    launch.argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=launch.cwd,
                    env=launch.env,
                    start_new_session=True,
                    close_fds=True,
                    pass_fds=launch.pass_fds,
                )
            finally:
                for fd in launch.close_after_start:
                    os.close(fd)
            killed = True
            try:
                cap = int(output_bytes if output_bytes is not None else limits.output_bytes)
                outcome = _communicate(process, stdin, started + timeout, cap, on_stdout)
            finally:
                killed = _end(process, isolation, launch, uid, init)
                for stream in (process.stdin, process.stdout, process.stderr):
                    if stream is not None:
                        stream.close()
            oom = cgroup.oom_kills() if cgroup is not None else 0
        finally:
            if cgroup_fd is not None:
                os.close(cgroup_fd)
            if launch is not None and launch.info_fd is not None:
                os.close(launch.info_fd)
            if uid is not None and isolation.mode == "uid":
                kill_uid(uid)
                remove_files_of_uid(uid)
                remove_ipc_of_uid(uid)
            if cgroup is not None:
                cgroup.remove()
            if workdir is not None:
                _remove_tree(workdir)
    stdout, stderr, timed_out, limited, truncated, stopped = outcome
    returncode = -signal.SIGKILL if killed else process.returncode
    if isolation.namespaces and returncode is not None and 128 < returncode <= 128 + _MAX_SIGNAL:
        returncode = 128 - returncode
    return SandboxResult(
        returncode=returncode,
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
    output_limited, stderr_truncated, stopped_early)``; the caller ends the run afterwards."""
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


def _high_fd(fd: int) -> int:
    """``fd`` moved to 10 or above (the init keeps 3-9 for itself)."""
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    finally:
        os.close(fd)


def _end(
    process: subprocess.Popen, isolation: Isolation, launch: Launch, uid: int | None, init: bool
) -> bool:
    """End the run and reap its first process; whether it had to be killed. Where it still runs: kill its
    namespace's PID 1 (the kernel kills the rest and the namespace's parent reaps them) or every process of
    its uid, wait for the first process to exit, then kill the process group (leftovers of the levels
    without a namespace)."""
    killed = not _has_exited(process.pid)
    if killed:
        signalled = True
        if isolation.namespaces:
            signalled = _kill_namespace(process.pid, launch.info_fd)
        elif isolation.mode == "uid" and uid is not None:
            # the init in front (the first process) kills and reaps what is left once its program is gone
            kill_uid(uid, spare=process.pid if init else None)
        else:
            signalled = False
        if signalled:
            _wait_exit(process.pid, END_WAIT_S)
        if isolation.mode == "uid" and uid is not None:
            kill_uid(uid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # the leader is not yet reaped: the group id is still ours
    process.wait()
    return killed


def _kill_namespace(outer: int, info_fd: int | None) -> bool:
    """SIGKILL the PID 1 of the namespace whose parent (``bwrap`` or ``unshare``) is ``outer``, through a
    pidfd, after checking its parent, so a recycled pid is never signalled; whether it was signalled."""
    pid = _bwrap_child(info_fd) if info_fd is not None else _child_of(outer)
    if pid is None:
        return False
    try:
        handle = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if _parent_of(pid) != outer:
            return False
        signal.pidfd_send_signal(handle, signal.SIGKILL)
        return True
    except OSError:
        return False
    finally:
        os.close(handle)


def _bwrap_child(info_fd: int) -> int | None:
    """The host pid of the namespace's PID 1, from bubblewrap's ``--info-fd`` JSON (written at start)."""
    import json

    data = b""
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            chunk = os.read(info_fd, 4096)
        except BlockingIOError:
            time.sleep(0.002)
            continue
        if not chunk:
            break
        data += chunk
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None


def _child_of(parent: int) -> int | None:
    """A child of ``parent`` (``unshare`` has exactly one: the namespace's PID 1), from /proc."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _parent_of(int(entry.name)) == parent:
            return int(entry.name)
    return None


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


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


def _wait_exit(pid: int, timeout_s: float) -> None:
    """Wait up to ``timeout_s`` for our child ``pid`` to exit, without reaping it."""
    handle = _pidfd(pid)
    if handle is not None:
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(handle, selectors.EVENT_READ)
                selector.select(timeout_s)
        finally:
            os.close(handle)
        return
    deadline = time.monotonic() + timeout_s
    while not _has_exited(pid) and time.monotonic() < deadline:
        time.sleep(0.002)


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
    """Remove a working directory even where the program removed permissions from its own files; never
    touches anything outside it (it may be gone already: the uid level removes the uid's files first)."""
    root = os.path.realpath(path)

    def fix_and_retry(function: Callable, target: str, _exc: Any) -> None:
        if not os.path.lexists(target):
            return
        for inside in (os.path.dirname(target), target):
            if os.path.realpath(inside) == root or os.path.realpath(inside).startswith(root + os.sep):
                with contextlib.suppress(OSError):
                    os.chmod(inside, 0o700)
        with contextlib.suppress(OSError):
            function(target)

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=fix_and_retry)
