"""The sandbox against hostile programs: each is contained, gets the right verdict, and leaves the host as it
was (no files touched outside the working directory, no processes left, no secret seen, no connection made).

The adversarial programs run once, together, on two workers (module fixture); each test then checks one
program's verdict and its effect on the host. Needs Linux; the strongest checks (network, hidden /tmp,
surviving the kill of the parent) depend on the isolation level found here and say so.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from p3bench.errors import ConfigError
from p3bench.execution import (
    CodeExecutionDisabledError,
    Sandbox,
    SandboxLimits,
    configure_execution,
    execution_settings,
    isolation_report,
    run_many,
)
from p3bench.execution import process as process_module
from p3bench.execution.apps import check_programs
from p3bench.execution.uids import UID_BASE, UID_SPAN, processes_of_uid

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")

TOKEN = uuid.uuid4().hex[:12]
SECRET = f"p3bench-secret-{TOKEN}"
PER_TEST_TIMEOUT_S = 1.0


@pytest.fixture(scope="module", autouse=True)
def code_execution_on():
    """Switch code execution on for this module (and the env override off), then restore both."""
    before = execution_settings()
    saved_env = os.environ.pop("P3BENCH_ALLOW_CODE_EXECUTION", None)
    configure_execution(True)
    yield
    configure_execution(before.allow_code_execution)
    if saved_env is not None:
        os.environ["P3BENCH_ALLOW_CODE_EXECUTION"] = saved_env


@pytest.fixture(scope="module")
def isolation():
    return Sandbox().isolation  # the isolation the checks below get (detected once)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory):
    """What the programs try to damage: a world-writable victim directory and file, a listening socket, and
    a secret in the host environment."""
    base = tmp_path_factory.mktemp("victim")
    victim_dir = base / "shared"
    victim_dir.mkdir()
    victim = victim_dir / "precious.txt"
    victim.write_text("precious")
    os.chmod(victim_dir, 0o777)
    os.chmod(victim, 0o666)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    os.environ["P3BENCH_TEST_SECRET"] = SECRET
    yield {
        "victim": victim,
        "victim_dir": victim_dir,
        "port": listener.getsockname()[1],
        "listener": listener,
    }
    os.environ.pop("P3BENCH_TEST_SECRET", None)
    listener.close()


CONTAINED = "contained"


def program_cases(host: dict, isolation) -> dict[str, tuple[str, set[str]]]:
    """name -> (program, accepted verdicts). Programs print ``contained`` when every attack failed."""
    victim, victim_dir, port = host["victim"], host["victim_dir"], host["port"]
    namespaces = isolation.namespaces
    # the runner is not dumpable, which shuts its /proc files to a child without CAP_SYS_PTRACE: every level
    # but userns (the program is namespace root, with CAP_SYS_PTRACE there) and rlimits as root
    runner_protected = not (isolation.mode == "userns" or (isolation.mode == "rlimits" and os.geteuid() == 0))
    attempt = (
        "import os, sys\n"
        "def attempt(action):\n"
        "    try:\n"
        "        action()\n"
        "        return True\n"
        "    except BaseException:\n"
        "        return False\n"
    )
    cases = {
        "infinite_loop": ("while True:\n    pass\n", {"timeout"}),
        "sleep_past_timeout": ("import time\ntime.sleep(60)\n", {"timeout"}),
        "correct_output_then_loop": (
            f"print({CONTAINED!r}, flush=True)\nwhile True:\n    pass\n",
            {"timeout"},
        ),
        "fork_bomb": ("import os\nwhile True:\n    os.fork()\n", {"runtime_error", "timeout"}),
        "fork_bomb_that_ignores_errors": (
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
            {"timeout", "runtime_error"},
        ),
        "memory_bomb": ("x = bytearray(16 * 1024 ** 3)\nprint('allocated')\n", {"runtime_error"}),
        "memory_bomb_growing": (
            "chunks = []\nwhile True:\n    chunks.append(bytearray(64 * 1024 ** 2))\n",
            {"runtime_error", "timeout"},  # filling 2 GiB may take longer than the 1 s limit
        ),
        "memory_bomb_forked": (
            "import os\nkids = []\nfor _ in range(4):\n    pid = os.fork()\n    if pid == 0:\n"
            "        try:\n            block = bytearray(700 * 1024 ** 2)\n            os._exit(0)\n"
            "        except MemoryError:\n            os._exit(1)\n    kids.append(pid)\n"
            "ok = 0\nfor pid in kids:\n    _, status = os.waitpid(pid, 0)\n    ok += status == 0\n"
            f"print({CONTAINED!r} if ok < 4 else 'all allocated')\n",
            # with a memory cgroup (2 GiB for the whole tree) at most two 700 MiB blocks fit, so "fail" (all
            # four allocated) would be an escape; without one, each process is only capped by RLIMIT_AS
            {"pass", "runtime_error", "timeout"}
            if isolation.cgroup is not None
            else {"pass", "fail", "runtime_error", "timeout"},
        ),
        "deep_recursion": (
            # Python frames live on the heap since 3.11: this ends in MemoryError or the timeout
            "import sys\nsys.setrecursionlimit(10 ** 8)\ndef f(n):\n    return f(n + 1) + 1\nf(0)\n",
            {"runtime_error", "timeout"},
        ),
        "c_stack_overflow": (
            # recursion through a C function (max's key) overflows the C stack: SIGSEGV
            "import sys\nsys.setrecursionlimit(10 ** 8)\ndef f(n):\n    return max([n + 1], key=f)\nf(0)\n",
            {"runtime_error"},
        ),
        "recursion_error": ("def f(n):\n    return f(n + 1)\nf(0)\n", {"runtime_error"}),
        "huge_stdout": ("while True:\n    print('x' * 10000)\n", {"runtime_error"}),
        "huge_stderr": ("import sys\nwhile True:\n    sys.stderr.write('y' * 10000)\n", {"timeout"}),
        "huge_file": ("open('big', 'wb').write(b'0' * (200 * 1024 ** 2))\n", {"runtime_error"}),
        "too_many_descriptors": (
            "files = []\nwhile True:\n    files.append(open('/dev/null'))\n",
            {"runtime_error"},
        ),
        "write_outside_workdir": (
            attempt + f"targets = ['/PWNED-{TOKEN}', '/etc/PWNED-{TOKEN}', '/usr/PWNED-{TOKEN}', "
            f"{str(Path.cwd() / ('PWNED-' + TOKEN))!r}, {str(victim_dir / ('PWNED-' + TOKEN))!r}, "
            f"'/var/tmp/PWNED-{TOKEN}', '/dev/shm/PWNED-{TOKEN}']\n"
            "wrote = [t for t in targets if attempt(lambda t=t: open(t, 'w').write('x'))]\n"
            f"print({CONTAINED!r} if not wrote else wrote)\n",
            # without a mount namespace /var/tmp and /dev/shm are the host's: the uid level removes what the
            # run's uid left there afterwards (test_host_files_untouched)
            {"pass"} if namespaces else {"pass", "fail"},
        ),
        "overwrite_and_delete_victim": (
            attempt + f"victim, folder = {str(victim)!r}, {str(victim_dir)!r}\n"
            "import shutil\n"
            "done = [attempt(lambda: open(victim, 'w').write('gone')), attempt(lambda: os.remove(victim)),\n"
            "        attempt(lambda: shutil.rmtree(folder)), attempt(lambda: os.chmod(victim, 0))]\n"
            f"print({CONTAINED!r} if not any(done) else done)\n",
            {"pass"},
        ),
        "chdir_and_write": (
            attempt
            + "def escape(path):\n    os.chdir(path)\n    open('PWNED-"
            + TOKEN
            + "', 'w').write('x')\n"
            "done = [attempt(lambda: escape('/')), attempt(lambda: escape('..')),\n"
            "        attempt(lambda: escape('/etc'))]\n"
            f"print({CONTAINED!r} if not any(done) else done)\n",
            {"pass"},
        ),
        "write_host_tmp": (
            # with namespaces /tmp is the private working directory: the write succeeds but the host never
            # sees it; without, /tmp is the host's and the uid level removes what the sandbox uid left there
            f"open('/tmp/p3bench-escape-{TOKEN}', 'w').write('x')\nprint({CONTAINED!r})\n",
            {"pass", "runtime_error"},
        ),
        "read_secrets": (
            attempt + "seen = ' '.join(f'{k}={v}' for k, v in os.environ.items())\n"
            "for pid in os.listdir('/proc'):\n    if pid.isdigit():\n"
            "        try:\n            seen += open(f'/proc/{pid}/environ', 'rb').read().decode('latin-1')\n"
            "        except OSError:\n            pass\n"
            "for path in ('/etc/shadow', '/root/.bash_history', '/root/.ssh/id_rsa'):\n"
            "    try:\n        seen += open(path).read()\n    except OSError:\n        pass\n"
            f"print({CONTAINED!r} if {SECRET!r} not in seen and 'root:' not in seen else 'leaked')\n",
            {"pass"},
        ),
        "open_socket": (
            attempt + "import socket\n"
            f"done = [attempt(lambda: socket.create_connection(('127.0.0.1', {port}), timeout=0.5)),\n"
            "        attempt(lambda: socket.create_connection(('1.1.1.1', 53), timeout=0.5)),\n"
            "        attempt(lambda: socket.getaddrinfo('example.com', 80))]\n"
            f"print({CONTAINED!r} if not any(done) else done)\n",
            {"pass"} if namespaces else {"pass", "fail"},
        ),
        "kill_parent_and_everyone": (
            "import os, signal\n"
            "for action in (lambda: os.kill(os.getppid(), signal.SIGKILL),\n"
            "               lambda: os.kill(1, signal.SIGKILL),\n"
            f"               lambda: os.kill({os.getpid()}, signal.SIGKILL),\n"
            "               lambda: os.kill(-1, signal.SIGKILL)):\n"
            "    try:\n        action()\n    except OSError:\n        pass\n"
            f"print({CONTAINED!r})\n",
            # PID 1 of a PID namespace ignores signals from inside it, so the runner survives there
            {"pass"} if namespaces else {"pass", "runtime_error"},
        ),
        "daemon_outlives_program": (
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        time.sleep(30)\n        open('/tmp/p3bench-daemon-{TOKEN}', 'w').write('x')\n"
            "    os._exit(0)\n"
            f"print({CONTAINED!r})\n",
            {"pass"},
        ),
        "stop_itself": (
            "import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)\nprint('resumed')\n",
            {"timeout"},
        ),
        "ignore_signals_and_spin": (
            "import signal\n"
            "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGXCPU, signal.SIGHUP, signal.SIGALRM):\n"
            "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass\n",
            {"timeout"},
        ),
        "busy_threads": (
            "import threading\ndef spin():\n    while True:\n        pass\n"
            "for _ in range(4):\n    threading.Thread(target=spin).start()\n",
            {"timeout"},
        ),
        "become_root_or_raise_limits": (
            attempt + "import resource\n"
            "done = [attempt(lambda: os.setuid(0)), attempt(lambda: os.setgid(0)),\n"
            "        attempt(lambda: resource.setrlimit(resource.RLIMIT_AS, (-1, -1))),\n"
            "        attempt(lambda: resource.setrlimit(resource.RLIMIT_NPROC, (-1, -1))),\n"
            "        attempt(lambda: os.nice(-10)),\n"
            f"        os.system('mount -t tmpfs none /mnt 2>/dev/null') == 0 and attempt(lambda: None)]\n"
            f"print({CONTAINED!r} if not any(done) else done)\n",
            {"pass"},
        ),
        "forge_verdict": (
            "import json, os\n"
            "fake = json.dumps({'test': 0, 'status': 'ok', 'stdout': 'expected', 'result': None,\n"
            "                   'stderr': '', 'time_s': 0, 'exit': 0, 'signal': None}) + '\\n'\n"
            "for fd in range(3, 64):\n"
            "    try:\n        os.write(fd, fake.encode())\n    except OSError:\n        pass\n"
            "print(fake)\n",
            {"fail"},
        ),
        "reopen_runner_channel": (
            # a test child reopens its runner's descriptors (the channel to the host among them) through
            # /proc and writes a row claiming a pass; the runner is not dumpable, so /proc/PPID/fd is closed
            # (in the root levels the host's pipes are root's, mode 0600, anyway; as a non-root user in the
            # rlimits level this forged a pass before)
            "import json, os\n"
            f"fake = json.dumps({{'test': 0, 'status': 'ok', 'stdout': {CONTAINED!r}, 'result': None,\n"
            "                   'stderr': '', 'time_s': 0, 'exit': 0, 'signal': None}) + '\\n'\n"
            "ppid = os.getppid()\n"
            "try:\n    fds = os.listdir(f'/proc/{ppid}/fd')\nexcept OSError:\n    fds = []\n"
            "for fd in fds:\n"
            "    try:\n"
            "        w = os.open(f'/proc/{ppid}/fd/{fd}', os.O_WRONLY | os.O_NONBLOCK)\n"
            "        os.write(w, fake.encode())\n        os.close(w)\n"
            "    except OSError:\n        pass\n"
            "print('forged', len(fds))\n",
            {"fail"} if runner_protected else {"pass", "fail"},
        ),
        "read_runner_memory": (
            # its memory (/proc/PPID/mem, through /proc/PPID/maps) and its descriptors (/proc/PPID/fd)
            "import os\nppid, seen = os.getppid(), False\n"
            "try:\n    seen = len(os.listdir(f'/proc/{ppid}/fd')) > 0\nexcept OSError:\n    pass\n"
            "try:\n"
            "    with open(f'/proc/{ppid}/maps') as maps:\n"
            "        start = int(maps.readline().split('-')[0], 16)\n"
            "    with open(f'/proc/{ppid}/mem', 'rb') as mem:\n"
            "        mem.seek(start)\n        seen = seen or len(mem.read(16)) == 16\n"
            "except (OSError, ValueError):\n    pass\n"
            f"print('read' if seen else {CONTAINED!r})\n",
            {"pass"} if runner_protected else {"pass", "fail"},
        ),
        "syntax_error": ("def broken(:\n    pass\n", {"compile_error"}),
        "null_bytes_in_source": ("print(1)\x00\n", {"compile_error"}),
        "exit_status_without_exception": (
            f"print({CONTAINED!r}, flush=True)\nimport os\nos._exit(3)\n",
            {"runtime_error"},
        ),
        "exit_zero_after_answer": (f"import sys\nprint({CONTAINED!r})\nsys.exit(0)\n", {"pass"}),
        "close_stdout": ("import os\nos.close(1)\nprint('lost')\n", {"runtime_error", "fail"}),
        "read_past_end_of_input": ("import sys\nsys.stdin.read()\ninput()\n", {"runtime_error"}),
        "ctypes_segfault": ("import ctypes\nctypes.string_at(0)\n", {"runtime_error"}),
    }
    if isolation.mode == "rlimits":
        # same uid as this test process and no PID namespace: kill(-1) would kill the test run itself
        del cases["kill_parent_and_everyone"]
    return cases


@pytest.fixture(scope="module")
def outcomes(host, isolation):
    cases = program_cases(host, isolation)
    tests = {"inputs": ["1\n"], "outputs": [CONTAINED]}
    used_uids: list[int] = []
    original = process_module.run_uid

    @contextlib.contextmanager
    def recording_run_uid(drop_privileges: bool):
        with original(drop_privileges) as uid:
            if uid is not None:
                used_uids.append(uid)
            yield uid

    started = time.monotonic()
    with pytest.MonkeyPatch.context() as patch:  # record the uids the suite's runs get
        patch.setattr(process_module, "run_uid", recording_run_uid)
        results = check_programs(
            [(program, tests) for program, _ in cases.values()],
            workers=2,
            per_test_timeout_s=PER_TEST_TIMEOUT_S,
        )
    elapsed = time.monotonic() - started
    return {
        "results": dict(zip(cases, results, strict=True)),
        "accepted": {name: accepted for name, (_, accepted) in cases.items()},
        "elapsed": elapsed,
        "uids": used_uids,
    }


CASE_NAMES = [
    "infinite_loop",
    "sleep_past_timeout",
    "correct_output_then_loop",
    "fork_bomb",
    "fork_bomb_that_ignores_errors",
    "memory_bomb",
    "memory_bomb_growing",
    "memory_bomb_forked",
    "deep_recursion",
    "c_stack_overflow",
    "recursion_error",
    "huge_stdout",
    "huge_stderr",
    "huge_file",
    "too_many_descriptors",
    "write_outside_workdir",
    "overwrite_and_delete_victim",
    "chdir_and_write",
    "write_host_tmp",
    "read_secrets",
    "open_socket",
    "kill_parent_and_everyone",
    "daemon_outlives_program",
    "stop_itself",
    "ignore_signals_and_spin",
    "busy_threads",
    "become_root_or_raise_limits",
    "forge_verdict",
    "reopen_runner_channel",
    "read_runner_memory",
    "syntax_error",
    "null_bytes_in_source",
    "exit_status_without_exception",
    "exit_zero_after_answer",
    "close_stdout",
    "read_past_end_of_input",
    "ctypes_segfault",
]


def test_suite_is_large_and_complete(outcomes):
    assert len(CASE_NAMES) >= 25
    assert set(outcomes["results"]) <= set(CASE_NAMES)
    assert len(outcomes["results"]) >= len(CASE_NAMES) - 1


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_program_gets_its_verdict(name: str, outcomes):
    if name not in outcomes["results"]:
        pytest.skip(f"{name} is not safe to run under this isolation level")
    result = outcomes["results"][name]
    verdict = result.verdicts[0].verdict
    assert verdict in outcomes["accepted"][name], f"{name}: {verdict} ({result.verdicts[0].detail})"
    # every run ends within its limits: the per-test timeout plus the runner's start and cleanup
    assert result.wall_s < PER_TEST_TIMEOUT_S + 8


def test_host_files_untouched(outcomes, host):
    victim, victim_dir = host["victim"], host["victim_dir"]
    assert victim.read_text() == "precious" and oct(victim.stat().st_mode & 0o777) == oct(0o666)
    assert sorted(p.name for p in victim_dir.iterdir()) == ["precious.txt"]
    for path in (
        Path(f"/PWNED-{TOKEN}"),
        Path(f"/etc/PWNED-{TOKEN}"),
        Path(f"/usr/PWNED-{TOKEN}"),
        Path.cwd() / f"PWNED-{TOKEN}",
        Path(f"/var/tmp/PWNED-{TOKEN}"),
        Path(f"/dev/shm/PWNED-{TOKEN}"),
        Path(f"/tmp/p3bench-escape-{TOKEN}"),
        Path(f"/tmp/p3bench-daemon-{TOKEN}"),
    ):
        assert not path.exists(), path


def test_no_process_outlives_its_run(outcomes, isolation):
    if not isolation.drops_privileges:
        pytest.skip(f"isolation {isolation.mode!r} keeps the current uid: leftovers cannot be told apart")
    uids = outcomes["uids"]
    assert len(uids) == len(outcomes["results"]) and all(UID_BASE <= u < UID_BASE + UID_SPAN for u in uids)
    # the daemon would write its file after 30 s and the fork bombs left children: all must be gone
    leftovers = {uid: processes_of_uid(uid) for uid in uids if processes_of_uid(uid)}
    assert leftovers == {}


def test_no_connection_reached_the_host(outcomes, host, isolation):
    if not isolation.namespaces:
        pytest.skip(f"isolation {isolation.mode!r} has no network namespace")
    with pytest.raises(BlockingIOError):
        host["listener"].accept()


def test_host_still_works(outcomes):
    assert os.getpid() > 0
    assert subprocess.run(["true"], check=False).returncode == 0
    assert os.getloadavg()[0] >= 0


def test_workdirs_removed(outcomes, isolation):
    if isolation.namespaces:
        pytest.skip("the working directory is a tmpfs inside the namespace: nothing on the host")
    leftovers = list(Path("/tmp").glob("p3bench-sandbox-*"))
    assert leftovers == []


# -------------------------------------------------------------------------------------- generic sandbox


def _shm_keys() -> set[str]:
    try:
        lines = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except OSError:
        return set()
    return {line.split()[0] for line in lines if line.split()}


SHM_PROGRAM = (
    "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
    "shmid = libc.shmget({key}, 4096, 0o1666)  # IPC_CREAT | 0666\n"
    "print(shmid, open('/proc/sysvipc/shm').read().count('{key_dec}'))\n"
)


def _remove_shm(keys: set[str]) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for line in Path("/proc/sysvipc/shm").read_text().splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] in keys:
            libc.shmctl(int(fields[1]), 0, None)  # IPC_RMID


def test_sysv_ipc_is_isolated(isolation):
    """A SysV shared memory segment a program creates (no IPC_RMID) is gone with its run, never on the host."""
    if not Path("/proc/sysvipc/shm").exists():
        pytest.skip("no /proc/sysvipc/shm here")
    key = 0x3B00_0000 + int(TOKEN[:6], 16) % 0x10000
    before = _shm_keys()
    result = Sandbox().run_python(SHM_PROGRAM.format(key=key, key_dec=key))
    shmid, seen = result.stdout.decode().split()
    assert result.ok and int(shmid) >= 0 and int(seen) == 1  # it was created and visible inside
    after = _shm_keys()
    leaked = after - before
    if not isolation.namespaces:
        _remove_shm(leaked)
        pytest.skip(f"isolation {isolation.mode!r} has no IPC namespace")
    _remove_shm(leaked)
    assert str(key) not in after and leaked == set()


def test_uid_lock_dir_is_fixed_not_tmpdir(tmp_path, monkeypatch):
    """Every process uses the same lock directory, whatever its TMPDIR: else two could take one uid."""
    from p3bench.execution import uids

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    assert str(uids.uid_lock_dir()) in uids.LOCK_DIRS
    if os.geteuid() != 0:
        return
    with uids.run_uid(True) as uid:
        assert uid is not None
        assert (uids.uid_lock_dir() / f"{uid}.lock").exists()
    assert list(tmp_path.iterdir()) == []


def test_auto_never_falls_back_to_rlimits_as_root(monkeypatch):
    """As root, rlimits runs programs as root with no process limit: only an explicit mode gets it."""
    from p3bench.execution import isolation as isolation_module

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(
        isolation_module,
        "_mode_possible",
        lambda mode, tools: None if mode == "rlimits" else f"{mode}: simulated failure",
    )
    answer = {"uid": 0, "version": "3.11.0", "readable": []}
    monkeypatch.setattr(isolation_module, "_probe", lambda candidate, limits: (answer, ""))
    detect = isolation_module.detect_isolation.__wrapped__  # uncached
    with pytest.raises(ConfigError, match="as root with no process limit") as error:
        detect("auto", None, False)
    assert "\n" not in str(error.value) and "mode=rlimits" in str(error.value)
    assert detect("rlimits", None, False).mode == "rlimits"


def test_stdout_is_not_kept_when_a_callback_takes_it():
    chunks: list[bytes] = []

    def take(chunk: bytes) -> bool:
        chunks.append(chunk)
        return False

    result = Sandbox().run_python("print('x' * 200000)", on_stdout=take)
    assert result.ok and result.stdout == b"" and b"".join(chunks) == b"x" * 200000 + b"\n"
    capped = Sandbox(SandboxLimits(output_bytes=4096)).run_python(
        "print('x' * 200000)", on_stdout=lambda chunk: False
    )
    assert capped.output_limited and capped.stdout == b""


def test_isolation_report_says_what_is_in_force():
    report = isolation_report()
    assert report["mode"] in ("bwrap", "namespaces", "uid", "userns", "rlimits")
    assert set(report) >= {"network", "pid_namespace", "user", "cgroup", "workdir", "python", "limits"}
    if report["mode"] == "namespaces":
        assert report["network"].startswith("isolated") and report["pid_namespace"]
    if os.geteuid() == 0 and sys.platform.startswith("linux"):
        # as root RLIMIT_NPROC binds nobody: the sandbox must drop to its own uid (or find no other way)
        assert report["mode"] in ("namespaces", "uid") or "needs root" not in " ".join(report["notes"])


def test_environment_is_scrubbed(host):
    assert os.environ["P3BENCH_TEST_SECRET"] == SECRET
    result = Sandbox().run_python("import json, os; print(json.dumps(dict(os.environ)))")
    env = json.loads(result.stdout)
    assert SECRET not in result.stdout.decode()
    assert set(env) <= {
        "PATH",
        "LANG",
        "LC_ALL",
        "HOME",
        "TMPDIR",
        "PYTHONHASHSEED",
        "PYTHONIOENCODING",
        "PYTHONDONTWRITEBYTECODE",
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "PWD",  # set by the setup shell's cd
        "OLDPWD",
    }


def test_runs_as_unprivileged_user_in_fresh_directory(isolation):
    code = "import os; print(os.getuid(), os.getcwd(), sorted(os.listdir('.')))"
    first = Sandbox().run_python(code + "; open('left-behind', 'w').write('x')")
    second = Sandbox().run_python(code)
    assert first.ok and second.ok
    uid, _, listing = second.stdout.decode().split(" ", 2)
    assert "left-behind" not in listing  # each run gets a fresh working directory
    if isolation.drops_privileges:
        assert UID_BASE <= int(uid) < UID_BASE + UID_SPAN


def test_wall_clock_timeout_kills_the_whole_group():
    started = time.monotonic()
    result = Sandbox(SandboxLimits(timeout_s=0.5)).run(
        ["/bin/sh", "-c", "sleep 30 & sleep 30 & (setsid sleep 30 &) ; wait"]
    )
    assert result.timed_out and result.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 5


def test_output_is_capped_without_deadlock():
    limits = SandboxLimits(output_bytes=4096, timeout_s=10)
    result = Sandbox(limits).run_python(
        "import sys\nsys.stderr.write('e' * 100000)\nsys.stdout.write('o' * 10 ** 7)\n", stdin=b"i" * 300_000
    )
    assert result.output_limited and len(result.stdout) == 4096
    assert len(result.stderr) <= 4096 and result.stderr_truncated
    assert result.wall_s < 5


def test_large_stdin_and_stdout_flow_both_ways():
    data = bytes(range(256)) * 4096  # 1 MiB through a pipe each way
    result = Sandbox(SandboxLimits(output_bytes=2 << 20)).run_python(
        "import sys\nsys.stdout.buffer.write(sys.stdin.buffer.read())\n", stdin=data
    )
    assert result.ok and result.stdout == data


def test_run_many_keeps_order_and_runs_in_parallel():
    sandbox = Sandbox()
    results = run_many(
        lambda i: sandbox.run_python(
            f"import time; start = time.time(); time.sleep(0.4); print({i}, start, time.time())"
        ),
        range(4),
        workers=2,
    )
    rows = [r.stdout.split() for r in results]
    assert [int(row[0]) for row in rows] == [0, 1, 2, 3]
    spans = [(float(row[1]), float(row[2])) for row in rows]
    # two at a time, not one: some programs ran at the same time
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1 :])


def test_limits_are_validated():
    with pytest.raises(ConfigError, match="memory_mb=0"):
        SandboxLimits(memory_mb=0)
    with pytest.raises(ConfigError, match="timeout_s='soon'"):
        SandboxLimits(timeout_s="soon")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="did you mean 'memory_mb'"):
        configure_execution(memory_mbb=10)
    with pytest.raises(ConfigError, match="mode 'namespace'"):
        configure_execution(mode="namespace")


def test_sandbox_refuses_when_code_execution_is_off(monkeypatch):
    configure_execution(False)
    try:
        with pytest.raises(CodeExecutionDisabledError, match="allow_code_execution=true"):
            Sandbox().run_python("print(1)")
        monkeypatch.setenv("P3BENCH_ALLOW_CODE_EXECUTION", "1")
        assert Sandbox().run_python("print(1)").stdout == b"1\n"
    finally:
        configure_execution(True)


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid level needs root")
def test_uid_level_contains_daemons_and_files():
    """The fallback for root without namespaces: processes and /tmp files of the run's uid are removed."""
    sandbox = Sandbox(SandboxLimits(timeout_s=5), mode="uid")
    daemon = (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(30)\n    os._exit(0)\n"
        "for folder in ('/tmp', '/var/tmp', '/dev/shm', os.environ['HOME']):\n"
        "    try:\n"
        f"        open(os.path.join(folder, 'p3bench-uid-level-{TOKEN}'), 'w').write('x')\n"
        "    except OSError:\n        pass\n"
        "print(os.getuid(), os.getcwd())\n"
    )
    result = sandbox.run_python(daemon)
    uid, workdir = result.stdout.decode().split()
    assert result.ok and UID_BASE <= int(uid) < UID_BASE + UID_SPAN
    assert processes_of_uid(int(uid)) == []
    for folder in ("/tmp", "/var/tmp", "/dev/shm"):
        assert not Path(folder, f"p3bench-uid-level-{TOKEN}").exists()
    assert not Path(workdir).exists()
    verdicts = check_programs(
        [
            ("while True:\n    pass\n", {"inputs": [""], "outputs": ["x"]}),
            ("print(input())", {"inputs": ["7"], "outputs": ["7"]}),
        ],
        sandbox=sandbox,
        per_test_timeout_s=0.5,
    )
    assert [r.verdicts[0].verdict for r in verdicts] == ["timeout", "pass"]
