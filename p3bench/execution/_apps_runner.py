"""APPS test runner, executed inside the sandbox (Hendrycks et al., 2021, arXiv 2105.09938).

Standalone, standard library only: the sandbox runs this file (through its entry point,
:mod:`p3bench.execution._sandbox_entry`) as PID 1 of the sandbox's PID namespace where there is one: no
test can signal it, and it reaps the tests' orphans itself, as soon as they exit.

Input, one JSON object on stdin: ``program``, ``mode`` (``"stdin"`` or ``"call"``), ``fn_name``, ``inputs``
(one per test: the stdin text, or the list of call arguments), ``timeout_s`` (per test), ``output_bytes``
(stdout kept per test), ``sweep`` (SIGKILL every other process after each test: only where the sandbox has
its own PID namespace or uid), ``subreaper`` and ``extra_sys_path``.

Output, one JSON line per test as it finishes: ``test``, ``status`` (``ok``, ``timeout``,
``runtime_error``, ``output_limit``, ``load_error``), ``stdout``, ``result`` (call-based: the return value
as JSON), ``stderr`` (its start), ``time_s``, ``exit`` and ``signal``; or one ``compile_error`` line.

Each test runs in a forked child with its own stdin, stdout and stderr, so state never leaks from one test
to the next and ``open(0)`` or ``sys.stdin.buffer`` work as on a judge. The child runs the program at the
top level of this script, through a module-level ``exec`` whose cost to the recursion limit the runner
measures once at its start and adds to the child's limit (the entry point does the same for the ``exec``
that runs this script): the program can recurse exactly as deep as it could alone. It ends as the
interpreter would: non-daemon threads joined, ``atexit`` handlers run, output flushed. The runner never receives expected
outputs: the host compares them, so a program cannot report a pass it did not earn.
"""

import builtins
import contextlib
import json
import math
import os
import re
import resource
import select
import signal
import sys
import time

LOAD_FAILED = 121  # child exit status: a call-based program failed to load or lacks the function
STDERR_KEEP = 4096
EXIT_GRACE_S = 0.02


def main(frames):
    """Run every test and stream its row; in a test's forked child, return the :class:`_Job` the child runs
    at the top level of this script instead, with the recursion limit raised by ``frames``."""
    payload = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    payload["frames"] = frames
    channel = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    _clean_sys_path(payload.get("extra_sys_path") or [])
    try:
        code = _compile(payload["program"], payload["mode"] == "stdin")
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError, OverflowError) as err:
        _emit(channel, {"compile_error": f"{type(err).__name__}: {err}"})
        return None
    base = _apps_names(payload["program"])
    if payload.get("subreaper"):
        _become_subreaper()
    _set_dumpable(False)
    reaper = _Reaper()
    for index, test in enumerate(payload["inputs"]):
        row = _run_test(index, code, test, payload, base, reaper)
        if isinstance(row, _Job):
            return row
        _emit(channel, row)
        if row["status"] == "load_error":
            break
    return None


class _Job:
    """What a test's child runs: ``code`` in ``names``; call-based, ``fn_name`` with ``args``."""

    def __init__(self, code, names, fn_name, args):
        self.code, self.names, self.fn_name, self.args = code, names, fn_name, args


class _Reaper:
    """Reaps every child of the runner as soon as it exits: SIGCHLD writes to a pipe that wakes the select
    loop. It keeps the exit status of the test's process (``watch``); the others are orphans the tests left,
    re-parented to the runner (PID 1 of the sandbox, or a subreaper), which would otherwise stay zombies,
    counted against the process limit, until the test ends."""

    def __init__(self):
        self.fd, write_fd = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(write_fd, False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # a handler: so the pipe is written
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self.watch = self.status = None

    def reap(self):
        with contextlib.suppress(OSError):
            while os.read(self.fd, 512):
                pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.watch:
                self.status = status

    def wait_for(self, pid):
        """Block until ``pid`` (already sent SIGKILL) is reaped; its status."""
        while self.status is None:
            try:
                done, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if done == pid:
                self.status = status
        return self.status

    @staticmethod
    def reset_in_child():
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def _compile(program, standard_input):
    """Compile ``program``. The APPS harness runs standard-input programs inside a function, so some
    reference solutions use ``return`` at top level or ``nonlocal`` for top-level names: when compiling
    fails only for such a reason, compile the program as the body of a function that is then called
    (``from m import *`` lines stay at module level, where they must be)."""
    try:
        return compile(program, "<solution>", "exec")
    except SyntaxError as err:
        if not standard_input:
            raise
        import ast

        try:
            tree = ast.parse(program, "<solution>")
        except SyntaxError:
            raise err from None
        star = [n for n in tree.body if isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names)]
        wrapper = ast.parse("def _apps_solution():\n    pass\n_apps_solution()\n")
        wrapper.body[0].body = [n for n in tree.body if n not in star] or wrapper.body[0].body
        wrapper.body[:0] = star
        try:
            return compile(ast.fix_missing_locations(wrapper), "<solution>", "exec")
        except SyntaxError:
            raise err from None


def _emit(fd, row):
    data = (json.dumps(row) + "\n").encode("utf-8")
    while data:
        data = data[os.write(fd, data) :]


def _clean_sys_path(extra):
    cwd = os.getcwd()
    sys.path[:] = [p for p in sys.path if p not in ("", ".", cwd)]
    sys.path.extend(p for p in extra if p not in sys.path)


# The names the APPS harness imports before every solution (solutions may use them without importing):
# name -> (module, attribute or None for the module itself). Bound only when the program mentions them.
APPS_NAMES = {
    "sys": ("sys", None),
    "time": ("time", None),
    "itertools": ("itertools", None),
    "collections": ("collections", None),
    "math": ("math", None),
    "fractions": ("fractions", None),
    "random": ("random", None),
    "heapq": ("heapq", None),
    "np": ("numpy", None),
    "lru_cache": ("functools", "lru_cache"),
    "List": ("typing", "List"),
    "Tuple": ("typing", "Tuple"),
}
for _name in ("accumulate", "product", "permutations", "combinations"):
    APPS_NAMES[_name] = ("itertools", _name)
for _name in ("Counter", "OrderedDict", "deque", "defaultdict", "ChainMap"):
    APPS_NAMES[_name] = ("collections", _name)
for _name in ("sqrt", "sin", "cos", "tan", "ceil", "fabs", "floor", "gcd", "exp", "log", "log2"):
    APPS_NAMES[_name] = ("math", _name)
for _name in (
    "heappush",
    "heappop",
    "heapify",
    "heapreplace",
    "heappushpop",
    "nlargest",
    "nsmallest",
    "merge",
):
    APPS_NAMES[_name] = ("heapq", _name)


def _apps_names(program):
    """The APPS header's names that ``program`` mentions, imported once here before the tests fork."""
    import importlib

    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", program))
    _legacy_aliases(words)
    names = {}
    for name, (module_name, attribute) in APPS_NAMES.items():
        if name not in words:
            continue
        try:
            module = importlib.import_module(module_name)
            names[name] = module if attribute is None else getattr(module, attribute)
        except Exception:
            pass
    return names


def _legacy_aliases(words):
    """Restore two aliases that newer Pythons removed and many APPS solutions (written for Python 3.5-3.8)
    use: ``fractions.gcd`` (removed in 3.9) and ``time.clock`` (removed in 3.8)."""
    if "gcd" in words and "fractions" in words:
        import fractions

        if not hasattr(fractions, "gcd"):
            fractions.gcd = math.gcd
    if "clock" in words and not hasattr(time, "clock"):
        time.clock = time.perf_counter


def _become_subreaper():
    """Orphans of a test become our children, so we can reap them (uid level, no PID namespace)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except Exception:
        pass


def _set_dumpable(flag):
    """``PR_SET_DUMPABLE``: off in the runner, so a test child of the same uid can neither read nor write
    its memory (``/proc/PPID/mem``, ptrace) nor reopen its descriptors (``/proc/PPID/fd/N``: the channel to
    the host), which would let it forge rows; back on in each child, whose ``/proc/self`` files it needs."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 1 if flag else 0, 0, 0, 0)  # PR_SET_DUMPABLE
    except Exception:
        pass


def _input_fd(data):
    try:
        fd = os.memfd_create("stdin")
    except (AttributeError, OSError):
        path = f".stdin-{os.getpid()}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.unlink(path)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _run_test(index, code, test, payload, base, reaper):
    call = payload["mode"] == "call"
    data = b"" if call else str(test).encode("utf-8")
    in_fd = _input_fd(data)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe() if call else (None, None)
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            return _child(code, test, payload, base, in_fd, out_w, err_w, res_w, reaper)
        except BaseException:
            os._exit(70)
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)
    for fd in (in_fd, out_w, err_w, res_w):
        if fd is not None:
            os.close(fd)
    caps = {out_r: payload["output_bytes"], err_r: STDERR_KEEP}
    if call:
        caps[res_r] = payload["output_bytes"]
    deadline = started + payload["timeout_s"]
    status, buffers, timed_out, limited, ended = _collect(pid, caps, deadline, err_r, reaper)
    status = _finish(pid, status, payload.get("sweep", False), reaper)
    for fd in caps:
        os.close(fd)
    elapsed = (ended or time.monotonic()) - started
    signal_number = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    result = buffers[res_r].decode("utf-8", "replace") if call else None
    if timed_out or signal_number == signal.SIGXCPU:
        verdict = "timeout"
    elif limited:
        verdict = "output_limit"
    elif exit_code == 0 and (not call or result):
        verdict = "ok"
    elif call and exit_code == LOAD_FAILED:
        verdict = "load_error"
    else:
        verdict = "runtime_error"
    return {
        "test": index,
        "status": verdict,
        "stdout": buffers[out_r].decode("utf-8", "replace"),
        "result": result,
        "stderr": buffers[err_r].decode("utf-8", "replace"),
        "time_s": round(elapsed, 4),
        "exit": exit_code,
        "signal": signal_number,
    }


def _collect(pid, caps, deadline, err_fd, reaper):
    """Read the child's pipes until it exits (plus a short grace), the deadline passes or stdout overflows;
    reap every child that exits meanwhile."""
    buffers = {fd: bytearray() for fd in caps}
    open_fds = set(caps)
    reaper.watch, reaper.status = pid, None
    ended = None
    timed_out = limited = False
    while True:
        now = time.monotonic()
        reaper.reap()
        if ended is None and reaper.status is not None:
            ended = now
        if ended is not None and (not open_fds or now - ended > EXIT_GRACE_S):
            break
        if now >= deadline:
            timed_out = True
            break
        wait = deadline - now if ended is None else min(deadline - now, EXIT_GRACE_S)
        for fd in select.select([*open_fds, reaper.fd], [], [], wait)[0]:
            if fd == reaper.fd:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.discard(fd)
                continue
            room = caps[fd] - len(buffers[fd])
            buffers[fd] += chunk[: max(room, 0)]
            if len(chunk) > room and fd != err_fd:
                limited = True
        if limited:
            break
    return reaper.status, buffers, timed_out, limited, ended


def _finish(pid, status, sweep, reaper):
    """Kill what is left of the test (its group; with ``sweep``, every other process we can signal) and
    reap it, so no test leaves anything running for the next."""
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    if sweep:
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)
    if status is None:
        status = reaper.wait_for(pid)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if not done:
            time.sleep(0.001)
    return status


def _child(code, test, payload, base, in_fd, out_w, err_w, res_w, reaper):
    """Set up a test's forked child (descriptors, limits, streams, names) and return its :class:`_Job`."""
    reaper.reset_in_child()
    _set_dumpable(True)  # its own memory, not the runner's: fork gave it a copy
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    os.dup2(in_fd, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    first_free = 3
    if res_w is not None:
        os.dup2(res_w, 3)
        first_free = 4
    os.closerange(first_free, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    cpu = int(math.ceil(payload["timeout_s"])) + 1
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard == resource.RLIM_INFINITY or hard > cpu:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    try:
        with open("/proc/self/oom_score_adj", "w") as handle:
            handle.write("1000")  # under a memory cap, the kernel kills the test, not the runner
    except OSError:
        pass
    sys.stdin = open(0, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)  # noqa: SIM115
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    names = dict(base)
    names.update({"stdin": sys.stdin, "stdout": sys.stdout, "__builtins__": builtins})
    sys.setrecursionlimit(sys.getrecursionlimit() + payload["frames"])
    if res_w is None:  # standard input: run as ``__main__``
        names["__name__"] = "__main__"
        return _Job(code, names, None, None)
    names["__name__"] = "solution"
    args = test if isinstance(test, list) else [test]
    if args and isinstance(args[0], dict):
        with contextlib.suppress(TypeError, ValueError):  # JSON keys are strings; APPS makes them ints
            args = [{int(k): v for k, v in args[0].items()}, *args[1:]]
    return _Job(code, names, payload["fn_name"], args)


def _write_result(value):
    """A call-based program's return value, as JSON, to descriptor 3."""
    data = _to_json(value).encode("utf-8")
    try:
        while data:
            data = data[os.write(3, data) :]
    except OSError:
        pass


def _exit(status):
    """End a test's child as the interpreter ends: non-daemon threads joined, ``atexit`` handlers run (an
    exception in one is printed, as by the interpreter), streams flushed; then ``_exit(status)``."""
    with contextlib.suppress(BaseException):
        _join_threads()
    with contextlib.suppress(BaseException):
        import atexit

        atexit._run_exitfuncs()
    os._exit(_flush(status))


def _find_function(names, fn_name):
    cls = names.get("Solution")
    if isinstance(cls, type) and hasattr(cls, fn_name):
        return getattr(cls(), fn_name)
    value = names.get(fn_name)
    return value if callable(value) else None


def _to_json(value):
    """The return value as JSON (tuples become lists, as APPS compares them); a value JSON cannot hold
    becomes a marker that equals no expected output."""

    def plain(item):
        if hasattr(item, "tolist") and not isinstance(item, type):
            return item.tolist()  # numpy arrays and scalars
        return {"__unserializable__": type(item).__name__, "repr": repr(item)[:200]}

    try:
        return json.dumps(value, default=plain)
    except (TypeError, ValueError, RecursionError, OverflowError):
        return json.dumps({"__unserializable__": type(value).__name__})


def _join_threads():
    """Wait for the program's non-daemon threads, as interpreter shutdown would."""
    threading = sys.modules.get("threading")
    if threading is None:
        return
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()


def _print_exception():
    with contextlib.suppress(BaseException):
        import traceback

        traceback.print_exc(limit=-5)


def _flush(status):
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    return status


def _deepest():
    """The deepest recursion reached from here (a probe: what a module-level ``exec`` takes is the
    difference between its value here and inside such an ``exec``)."""

    def down(depth):
        try:
            return down(depth + 1)
        except RecursionError:
            return depth

    return down(1)


if __name__ == "__main__":
    _probe = {"deepest": _deepest}
    exec(compile("found = deepest()", "<probe>", "exec"), _probe)  # as the program will be, below
    _job = main(max(0, min(_deepest() - _probe["found"], 16)))
    if _job is not None:
        # A test's forked child. The program runs here, at the top level of this script, not in a function,
        # so that (with the limit raised by what this exec takes) it can recurse as deep as alone. Standard
        # input: ``exit()`` ends it normally, as in the APPS harness. Call-based: load it, find ``fn_name``
        # (on ``Solution()`` or at top level), call it once.
        if _job.fn_name is None:
            try:
                with contextlib.suppress(SystemExit):
                    exec(_job.code, _job.names)
            except BaseException:
                _print_exception()
                _exit(1)
            _exit(0)
        try:
            exec(_job.code, _job.names)
            _target = _find_function(_job.names, _job.fn_name)
        except BaseException:
            _print_exception()
            _exit(LOAD_FAILED)
        if _target is None:
            sys.stderr.write(
                f"the program defines no function {_job.fn_name!r} (top level or in class Solution)\n"
            )
            _exit(LOAD_FAILED)
        try:
            _value = _target(*_job.args)
            _join_threads()
        except BaseException:
            _print_exception()
            _exit(1)
        _write_result(_value)
        _exit(0)
