"""Run one untrusted program in a sandbox, or many in a small pool.

Each run is a separate process tree started in a new session, inside the isolation that
:func:`~p3bench.execution.isolation.detect_isolation` found (bubblewrap or hand-written namespaces with a
read-only view of the interpreter only, an unprivileged uid, cgroups, ``setrlimit`` limits), behind a
minimal init, with a scrubbed environment and a fresh working directory (:mod:`~p3bench.execution.process`
runs it, :mod:`~p3bench.execution.launch` builds its command line).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, TypeVar

from p3bench.execution.isolation import Isolation, detect_isolation
from p3bench.execution.launch import Program
from p3bench.execution.limits import SandboxLimits
from p3bench.execution.policy import execution_settings, require_code_execution
from p3bench.execution.process import SandboxResult, run_in
from p3bench.utils.progress import progress_bar

__all__ = ["Sandbox", "SandboxResult", "run_many"]

T = TypeVar("T")
R = TypeVar("R")


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

    def run_python(
        self, code: str, stdin: bytes = b"", *, precompile: bool = False, **kwargs: Any
    ) -> SandboxResult:
        """Run Python source ``code`` with ``stdin`` as ``python -s -B -c code`` would, in the sandbox's
        interpreter behind its entry point (which raises the recursion limit by what it takes); see
        :meth:`run`. ``precompile``: compile ``code`` here once and send its bytecode, where the sandbox's
        interpreter reads this one's (for code run many times, like the APPS runner)."""
        return self._run(Program(source=code, precompile=precompile), stdin, **kwargs)

    def run(self, argv: Sequence[str], stdin: bytes = b"", **kwargs: Any) -> SandboxResult:
        """Run ``argv`` in the sandbox, feeding ``stdin``.

        Keyword arguments: ``timeout_s`` and ``output_bytes`` override ``limits.timeout_s`` and
        ``limits.output_bytes`` for this run. ``on_stdout(chunk)`` sees each chunk of standard output as it
        arrives; returning True ends the run (``stopped_early``), which lets a caller stop at the first
        failing test. With it, standard output is not kept (the result's ``stdout`` is empty): the callback
        owns it, and the cap still counts it. ``init=False`` runs the command as PID 1 of the sandbox's PID
        namespace instead of behind the init; it must then reap its own orphans (the APPS runner does).
        """
        return self._run(Program(argv=tuple(argv)), stdin, **kwargs)

    def _run(
        self,
        program: Program,
        stdin: bytes,
        *,
        timeout_s: float | None = None,
        on_stdout: Callable[[bytes], bool] | None = None,
        output_bytes: int | None = None,
        init: bool = True,
    ) -> SandboxResult:
        require_code_execution()
        return run_in(
            self.isolation,
            self.limits,
            program,
            stdin,
            timeout_s=timeout_s,
            on_stdout=on_stdout,
            output_bytes=output_bytes,
            init=init,
        )


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
