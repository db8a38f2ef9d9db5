"""Running untrusted programs: the sandbox, the opt-in switch, APPS checking and code metrics.

- :mod:`~p3bench.execution.policy`: code execution is off unless switched on (config or
  ``P3BENCH_ALLOW_CODE_EXECUTION=1``); :func:`configure_execution` sets timeouts, limits and workers.
- :mod:`~p3bench.execution.isolation`: what isolation this machine allows (:func:`isolation_report`).
- :mod:`~p3bench.execution.sandbox`: :class:`Sandbox` runs one program; :func:`run_many` many.
- :mod:`~p3bench.execution.apps`: APPS tests (Hendrycks et al., 2021, arXiv 2105.09938): per-test
  verdicts, the ``apps`` evaluator.
- :mod:`~p3bench.execution.metrics`: test-case average, strict accuracy, pass@k.

Heavy parts load lazily: importing this package runs nothing.
"""

from p3bench.execution.isolation import isolation_report
from p3bench.execution.limits import SandboxLimits
from p3bench.execution.metrics import apps_scores, pass_at_k, pass_at_k_scores
from p3bench.execution.policy import (
    ENV_VAR,
    CodeExecutionDisabledError,
    ExecutionSettings,
    code_execution_allowed,
    configure_execution,
    execution_settings,
    require_code_execution,
)
from p3bench.execution.sandbox import Sandbox, SandboxResult, run_many

__all__ = [
    "ENV_VAR",
    "CodeExecutionDisabledError",
    "ExecutionSettings",
    "Sandbox",
    "SandboxLimits",
    "SandboxResult",
    "apps_scores",
    "code_execution_allowed",
    "configure_execution",
    "execution_settings",
    "isolation_report",
    "pass_at_k",
    "pass_at_k_scores",
    "require_code_execution",
    "run_many",
]
