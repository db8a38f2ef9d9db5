"""The APPS runner runs a program as a normal interpreter would: ``atexit`` handlers run, the program can
recurse exactly as deep as it could alone (the sandbox's entry point and the runner raise the recursion
limit by what their module-level ``exec`` takes), and the APPS header's ``np`` is numpy wherever the
isolation report says numpy can be imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

from p3bench.execution.apps import check_program

from .sandbox_levels import code_execution_on, level_sandbox  # noqa: F401

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux"),
    pytest.mark.usefixtures("code_execution_on"),
]


@pytest.fixture(params=["auto", "namespaces", "uid"])
def sandbox(request):
    return level_sandbox(request.param)


def test_atexit_handlers_run(sandbox):
    stdin_program = "import atexit\natexit.register(print, 'bye')\nprint(input())\n"
    result = check_program(stdin_program, {"inputs": ["hi"], "outputs": ["hi\nbye"]}, sandbox=sandbox)
    assert result.verdicts[0].verdict == "pass", result.verdicts[0].detail
    after_exit = "import atexit, sys\natexit.register(print, 'bye')\nprint(input())\nsys.exit(0)\n"
    result = check_program(after_exit, {"inputs": ["hi"], "outputs": ["hi\nbye"]}, sandbox=sandbox)
    assert result.verdicts[0].verdict == "pass", result.verdicts[0].detail


# The deepest recursion this interpreter allows a program, measured without any sandbox.
DEEPEST = (
    "def f(depth):\n    try:\n        return f(depth + 1)\n    except RecursionError:\n        return depth\n"
    "print(f(1))\n"
)
RECURSE = "def g(n):\n    return 0 if n == 0 else g(n - 1) + 1\nprint(g({n}))\n"


def test_the_program_keeps_its_recursion_depth(sandbox):
    bare = subprocess.run(
        [sandbox.python, "-s", "-B", "-c", DEEPEST], capture_output=True, text=True, check=True, timeout=60
    )
    deepest = int(bare.stdout)  # under the module frame: g(deepest - 1) is the deepest g that fits bare
    assert deepest > 900
    n = deepest - 1
    direct = sandbox.run_python(RECURSE.format(n=n))
    assert direct.ok and direct.stdout == f"{n}\n".encode(), direct.stderr[-300:]
    assert not sandbox.run_python(RECURSE.format(n=n + 1)).ok  # and no deeper: the limit is the program's
    result = check_program(RECURSE.format(n=n), {"inputs": [""], "outputs": [str(n)]}, sandbox=sandbox)
    assert result.verdicts[0].verdict == "pass", result.verdicts[0].detail
    deeper = check_program(
        RECURSE.format(n=n + 1), {"inputs": [""], "outputs": [str(n + 1)]}, sandbox=sandbox
    )
    assert deeper.verdicts[0].verdict == "runtime_error"
    call = "def depth(n):\n    return 0 if n == 0 else depth(n - 1) + 1\n"
    result = check_program(
        call, {"inputs": [[n - 1]], "outputs": [n - 1], "fn_name": "depth"}, sandbox=sandbox
    )
    assert result.verdicts[0].verdict == "pass", result.verdicts[0].detail


def test_the_apps_header_numpy_is_there_or_reported_missing(sandbox):
    report = sandbox.report()
    result = check_program(
        "print(int(np.array([1, 2, 3]).sum()))", {"inputs": [""], "outputs": ["6"]}, sandbox=sandbox
    )
    if report["packages"]["numpy_importable"]:
        assert result.verdicts[0].verdict == "pass", result.verdicts[0].detail
    else:
        assert "numpy" in report["packages"]["MISSING"]
        assert result.verdicts[0].verdict == "runtime_error"
