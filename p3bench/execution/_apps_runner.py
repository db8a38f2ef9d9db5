"""APPS test runner, executed inside the sandbox (Hendrycks et al., 2021, arXiv 2105.09938).

Standalone, standard library only: the sandbox runs this file's text as ``python -s -B -c SOURCE``.

Input, one JSON object on stdin: ``program``, ``mode`` (``"stdin"`` or ``"call"``), ``fn_name``, ``inputs``
(one per test: the stdin text, or the list of call arguments), ``timeout_s`` (per test), ``output_bytes``
(stdout kept per test), ``sweep`` (SIGKILL every other process after each test: only where the sandbox has
its own PID namespace or uid), ``subreaper`` and ``extra_sys_path``.

Output, one JSON line per test as it finishes: ``test``, ``status`` (``ok``, ``timeout``,
``runtime_error``, ``output_limit``, ``load_error``), ``stdout``, ``result`` (call-based: the return value
as JSON), ``stderr`` (its start), ``time_s``, ``exit`` and ``signal``; or one ``compile_error`` line.

Each test runs in a forked child with its own stdin, stdout and stderr, so state never leaks from one test
to the next and ``open(0)`` or ``sys.stdin.buffer`` work as on a judge. The runner never receives expected
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


def main():
    payload = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    channel = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    _clean_sys_path(payload.get("extra_sys_path") or [])
    try:
        code = _compile(payload["program"], payload["mode"] == "stdin")
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError, OverflowError) as err:
        _emit(channel, {"compile_error": f"{type(err).__name__}: {err}"})
        return
    base = _apps_names(payload["program"])
    if payload.get("subreaper"):
        _become_subreaper()
    _set_dumpable(False)
    for index, test in enumerate(payload["inputs"]):
        row = _run_test(index, code, test, payload, base)
        _emit(channel, row)
        if row["status"] == "load_error":
            break


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


def _run_test(index, code, test, payload, base):
    call = payload["mode"] == "call"
    data = b"" if call else str(test).encode("utf-8")
    in_fd = _input_fd(data)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe() if call else (None, None)
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        status = 70
        try:
            status = _child(code, test, payload, base, in_fd, out_w, err_w, res_w)
        finally:
            os._exit(status)
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)
    for fd in (in_fd, out_w, err_w, res_w):
        if fd is not None:
            os.close(fd)
    caps = {out_r: payload["output_bytes"], err_r: STDERR_KEEP}
    if call:
        caps[res_r] = payload["output_bytes"]
    status, buffers, timed_out, limited, ended = _collect(pid, caps, started + payload["timeout_s"], err_r)
    status = _finish(pid, status, payload.get("sweep", False))
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


def _collect(pid, caps, deadline, err_fd):
    """Read the child's pipes until it exits (plus a short grace), the deadline passes or stdout overflows."""
    buffers = {fd: bytearray() for fd in caps}
    open_fds = set(caps)
    try:
        exit_fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        exit_fd = None
    status = ended = None
    timed_out = limited = False
    try:
        while True:
            now = time.monotonic()
            if status is None and exit_fd is None:
                done, wait_status = os.waitpid(pid, os.WNOHANG)
                if done:
                    status, ended = wait_status, now
            if status is not None and (not open_fds or now - ended > EXIT_GRACE_S):
                break
            if now >= deadline:
                timed_out = True
                break
            watch = list(open_fds)
            if exit_fd is not None and status is None:
                watch.append(exit_fd)
            wait = deadline - now
            if exit_fd is None or status is not None:
                wait = min(wait, 0.005)
            ready = select.select(watch, [], [], wait)[0] if watch else []
            if not watch:
                time.sleep(wait)
            for fd in ready:
                if fd == exit_fd:
                    status, ended = os.waitpid(pid, 0)[1], time.monotonic()
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
    finally:
        if exit_fd is not None:
            os.close(exit_fd)
    return status, buffers, timed_out, limited, ended


def _finish(pid, status, sweep):
    """Kill what is left of the test (its group; with ``sweep``, every other process we can signal) and
    reap it, so no test leaves anything running for the next."""
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    if sweep:
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)
    if status is None:
        status = os.waitpid(pid, 0)[1]
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if not done:
            time.sleep(0.001)
    return status


def _child(code, test, payload, base, in_fd, out_w, err_w, res_w):
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
    if res_w is None:
        return _run_script(code, names)
    return _run_call(code, names, payload["fn_name"], test)


def _run_script(code, names):
    """Standard-input program: run as ``__main__``; ``exit()`` ends it normally, as in the APPS harness."""
    names["__name__"] = "__main__"
    status = 0
    try:
        with contextlib.suppress(SystemExit):
            exec(code, names)
        _join_threads()
    except BaseException:
        _print_exception()
        status = 1
    return _flush(status)


def _run_call(code, names, fn_name, test):
    """Call-based program: load it, find ``fn_name`` (on ``Solution()`` or at top level), call it once."""
    names["__name__"] = "solution"
    try:
        exec(code, names)
        target = _find_function(names, fn_name)
    except BaseException:
        _print_exception()
        return _flush(LOAD_FAILED)
    if target is None:
        sys.stderr.write(f"the program defines no function {fn_name!r} (top level or in class Solution)\n")
        return _flush(LOAD_FAILED)
    args = test if isinstance(test, list) else [test]
    if args and isinstance(args[0], dict):
        with contextlib.suppress(TypeError, ValueError):  # JSON keys are strings; APPS makes them ints
            args = [{int(k): v for k, v in args[0].items()}, *args[1:]]
    try:
        value = target(*args)
        _join_threads()
    except BaseException:
        _print_exception()
        return _flush(1)
    data = _to_json(value).encode("utf-8")
    try:
        while data:
            data = data[os.write(3, data) :]
    except OSError:
        pass
    return _flush(0)


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


if __name__ == "__main__":
    main()
