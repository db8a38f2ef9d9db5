"""The opt-in switch for running untrusted programs, and the process-wide execution settings.

Running model-written code is off by default. It is switched on by the config (``allow_code_execution: true``,
for APPS ``dataset.params.allow_code_execution=true``, which calls :func:`configure_execution`) or by the
environment variable ``P3BENCH_ALLOW_CODE_EXECUTION``: ``1``/``true``/``yes``/``on`` switch it on, and
``0``/``false``/``no``/``off`` switch it off whatever the config says. Anything that would run a program
calls :func:`require_code_execution` first, which raises :class:`CodeExecutionDisabledError` when it is off.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field, replace
from typing import Any

from p3bench.errors import ConfigError
from p3bench.execution.limits import SandboxLimits
from p3bench.registry import closest

ENV_VAR = "P3BENCH_ALLOW_CODE_EXECUTION"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
MODES = ("auto", "bwrap", "namespaces", "uid", "userns", "rlimits")


class CodeExecutionDisabledError(ConfigError):
    """Running a program was requested while code execution is switched off."""


DISABLED_MESSAGE = (
    "code execution is switched off: checking this task runs programs written by a model, which may do "
    "anything the sandbox does not prevent (see docs/sandbox.md for what it isolates); to allow it, set "
    f"allow_code_execution=true (for APPS: dataset.params.allow_code_execution=true) or {ENV_VAR}=1"
)


@dataclass(frozen=True)
class ExecutionSettings:
    """Process-wide settings for checking programs.

    ``per_test_timeout_s`` is the wall-clock limit for one test (APPS uses 4 seconds, arXiv 2105.09938);
    ``limits`` bound each sandboxed process; ``workers`` is the pool size for checking many programs;
    ``mode`` forces an isolation level (``auto`` picks the strongest that works, see
    :mod:`p3bench.execution.isolation`); ``use_cgroup`` caps the memory of each run's whole process tree
    with a cgroup where one can be created (with cgroup v2, joining it costs an RCU grace period per run).
    """

    allow_code_execution: bool = False
    per_test_timeout_s: float = 4.0
    workers: int = 2
    mode: str = "auto"
    use_cgroup: bool = True
    limits: SandboxLimits = field(default_factory=SandboxLimits)

    def __post_init__(self) -> None:
        if not isinstance(self.allow_code_execution, bool):
            raise ConfigError(
                f"allow_code_execution={self.allow_code_execution!r} is not a boolean: expected true or false"
            )
        timeout = self.per_test_timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
            raise ConfigError(f"per_test_timeout_s={timeout!r} is invalid: expected seconds in (0, 3600]")
        if (
            isinstance(self.workers, bool)
            or not isinstance(self.workers, int)
            or not 1 <= self.workers <= 256
        ):
            raise ConfigError(f"workers={self.workers!r} is invalid: expected an integer in [1, 256]")
        if not isinstance(self.use_cgroup, bool):
            raise ConfigError(f"use_cgroup={self.use_cgroup!r} is not a boolean: expected true or false")
        if self.mode not in MODES:
            hint = closest(str(self.mode), list(MODES))
            suggestion = f"; did you mean {hint!r}?" if hint else ""
            raise ConfigError(
                f"execution mode {self.mode!r} is unknown: expected one of {', '.join(MODES)}{suggestion}"
            )


_lock = threading.Lock()
_settings = ExecutionSettings()


def env_override() -> bool | None:
    """The value of ``P3BENCH_ALLOW_CODE_EXECUTION``: True, False, or None when it is not set."""
    raw = os.environ.get(ENV_VAR)
    if raw is None:
        return None
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{ENV_VAR}={raw!r} is not a boolean: expected one of {', '.join(_TRUE + _FALSE[:-1])}")


def execution_settings() -> ExecutionSettings:
    """The current process-wide settings (``allow_code_execution`` as configured, before the env override)."""
    return _settings


def configure_execution(
    allow_code_execution: bool | None = None,
    *,
    per_test_timeout_s: float | None = None,
    workers: int | None = None,
    mode: str | None = None,
    use_cgroup: bool | None = None,
    **limits: Any,
) -> ExecutionSettings:
    """Update the process-wide settings; ``limits`` are :class:`SandboxLimits` fields (``memory_mb=...``).

    Arguments left as None keep their current value. An unknown limit name is a :class:`ConfigError` naming
    the known ones. Returns the new settings.
    """
    global _settings
    known = SandboxLimits.field_names()
    for name in limits:
        if name not in known:
            hint = closest(name, list(known))
            suggestion = f"; did you mean {hint!r}?" if hint else ""
            raise ConfigError(
                f"execution setting {name!r} is unknown: expected one of per_test_timeout_s, workers, mode, "
                "use_cgroup, "
                f"{', '.join(known)}{suggestion}"
            )
    with _lock:
        current = _settings
        changes: dict[str, Any] = {}
        if allow_code_execution is not None:
            changes["allow_code_execution"] = allow_code_execution
        if per_test_timeout_s is not None:
            changes["per_test_timeout_s"] = per_test_timeout_s
        if workers is not None:
            changes["workers"] = workers
        if mode is not None:
            changes["mode"] = mode
        if use_cgroup is not None:
            changes["use_cgroup"] = use_cgroup
        if limits:
            changes["limits"] = replace(current.limits, **limits)
        _settings = replace(current, **changes)
        return _settings


def code_execution_allowed() -> bool:
    """Whether programs may run: the environment variable when set, else the configured switch."""
    override = env_override()
    return _settings.allow_code_execution if override is None else override


def require_code_execution() -> None:
    """Raise :class:`CodeExecutionDisabledError` (one line, saying how to switch it on) unless allowed."""
    if not code_execution_allowed():
        raise CodeExecutionDisabledError(DISABLED_MESSAGE)
