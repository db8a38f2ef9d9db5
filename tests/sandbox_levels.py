"""Helpers for the sandbox tests: a sandbox forced to one isolation level (skipping where it does not work
here), code execution switched on for a test module, and a look at the host's processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p3bench.errors import ConfigError
from p3bench.execution import Sandbox, SandboxLimits, configure_execution, execution_settings

REPO_ROOT = Path(__file__).resolve().parents[1]


def level_sandbox(mode: str, limits: SandboxLimits | None = None) -> Sandbox:
    """A sandbox in isolation level ``mode`` (``auto``: the detected one); skips where it does not work, and
    where ``mode`` is the detected level (the ``auto`` case covers it)."""
    if mode != "auto" and Sandbox(mode="auto").isolation.mode == mode:
        pytest.skip(f"isolation level {mode!r} is the detected one: tested as 'auto'")
    sandbox = Sandbox(limits, mode=mode)
    try:
        sandbox.isolation  # noqa: B018  (detects the level)
    except ConfigError as err:
        pytest.skip(f"isolation level {mode!r} does not work here: {str(err)[:300]}")
    return sandbox


@pytest.fixture(scope="module")
def code_execution_on():
    """Code execution switched on for a test module (the environment override cleared), then restored."""
    before = execution_settings().allow_code_execution
    saved = os.environ.pop("P3BENCH_ALLOW_CODE_EXECUTION", None)
    configure_execution(True)
    yield
    configure_execution(before)
    if saved is not None:
        os.environ["P3BENCH_ALLOW_CODE_EXECUTION"] = saved


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def descendants(root: int) -> set[int]:
    """``root`` and every process below it, from the parent pids in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            parent = parent_of(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found, stack = set(), [root]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack += children.get(pid, [])
    return found
