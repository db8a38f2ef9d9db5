"""The program is not PID 1: an init stands in front of it, so signals it sends itself end it, its orphans
are reaped at once (zombies would fill the process limit), and when a run ends, killed or not, every one of
its processes has exited and been reaped: not even a zombie is left on the host."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from p3bench.execution import SandboxLimits
from p3bench.execution.apps import check_program

from .sandbox_levels import code_execution_on, descendants, level_sandbox  # noqa: F401

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux"),
    pytest.mark.usefixtures("code_execution_on"),
]

#: The levels with an init: a PID namespace's (bwrap, namespaces, userns), or the entry point's (uid).
LEVELS = ["auto", "bwrap", "namespaces", "userns", "uid"]


@pytest.fixture(params=LEVELS)
def sandbox(request):
    # max_processes 24: below the 40 orphans, with room for the few zombies a busy machine leaves unreaped
    # for a moment (unreaped, all 40 would exceed it)
    return level_sandbox(request.param, SandboxLimits(max_processes=24))


@pytest.mark.parametrize(
    ("program", "signal_number"),
    [
        ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\nprint('survived')", 9),
        ("import os\nos.abort()\nprint('survived')", 6),
        ("import signal, time\nsignal.alarm(1)\ntime.sleep(8)\nprint('survived')", 14),
    ],
    ids=["self-SIGKILL", "abort", "alarm"],
)
def test_signals_a_program_sends_itself_end_it(sandbox, program: str, signal_number: int):
    result = sandbox.run_python(program, timeout_s=6)
    assert not result.timed_out and result.stdout == b""
    assert result.returncode == -signal_number
    assert result.stderr == b""  # nothing from the init ("Killed") in the program's stderr


ORPHANS = "import os\nprint(sum(os.system('sleep 0 &') == 0 for _ in range(40)))\n"


def test_orphans_are_reaped_at_once(sandbox):
    """Each ``sleep 0 &`` is orphaned at once; unreaped, 40 of them would exceed the process limit."""
    assert sandbox.limits.max_processes < 40
    result = sandbox.run_python(ORPHANS)
    assert result.ok and result.stdout == b"40\n", result.stderr[-500:]


def test_orphans_of_a_checked_program_are_reaped_at_once(sandbox):
    result = check_program(ORPHANS, {"inputs": [""], "outputs": ["40"]}, sandbox=sandbox)
    assert result.verdicts[0].verdict == "pass", result.verdicts[0].detail


# Children in the program's group, one that left it (setsid), then it waits to be killed.
FAMILY = (
    "import os, subprocess, time\n"
    "kids = [subprocess.Popen(['sleep', '30']) for _ in range(3)]\n"
    "if os.fork() == 0:\n    os.setsid()\n    time.sleep(30)\n    os._exit(0)\n"
    "print('ready', flush=True)\n"
    "time.sleep(30)\n"
)


@pytest.mark.parametrize("ending", ["timeout", "stopped"])
def test_a_killed_run_leaves_no_process_behind(sandbox, monkeypatch, ending: str):
    """The run's whole process tree, recorded while it runs, is gone (reaped, no zombie) when the run
    returns, whether the timeout or the caller (``on_stdout`` returning True) ended it."""
    started: list[int] = []
    tree: set[int] = set()

    class RecordingPopen(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self.pid)

    def on_stdout(chunk: bytes) -> bool:
        if b"ready" in chunk and not tree:
            tree.update(descendants(started[-1]))
        return ending == "stopped"

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    sandbox.limits = SandboxLimits(timeout_s=2.5)
    result = sandbox.run_python(FAMILY, on_stdout=on_stdout)
    assert result.timed_out if ending == "timeout" else result.stopped_early
    assert len(tree) >= 6, tree  # the run's first process, (init,) program, three sleeps, the daemon
    left = {pid: _state(pid) for pid in tree if os.path.exists(f"/proc/{pid}")}
    assert left == {}


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
