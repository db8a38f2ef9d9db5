"""Checking programs against APPS tests (Hendrycks et al., 2021, arXiv 2105.09938) in the sandbox.

:func:`check_program` runs one program on all of a problem's tests inside one sandboxed runner process
(:mod:`p3bench.execution._apps_runner`), each test in its own forked child with the APPS per-test timeout
(4 seconds by default), and compares outputs here on the host (:mod:`p3bench.execution.compare`). Each test
gets a verdict: ``pass``, ``fail``, ``timeout``, ``runtime_error`` or ``compile_error`` (a program that does
not compile, or a call-based program that fails to load or lacks the function, gets ``compile_error`` on
every test, and no further test runs); ``skipped`` marks tests not run after an early stop.

:func:`evaluate_apps` is the ``apps`` evaluator, ``(generated_text, example) -> bool``: strict (every test
passes), stopping at the first failing test. :func:`evaluate_apps_detailed` returns the full
:class:`ProgramResult` (per-test verdicts, test-case average) that metrics need.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from p3bench.data.example import Example
from p3bench.errors import DataError
from p3bench.execution.compare import call_result_matches, stdout_matches
from p3bench.execution.launch import script_source
from p3bench.execution.policy import execution_settings, require_code_execution
from p3bench.execution.sandbox import Sandbox, run_many

VERDICTS = ("pass", "fail", "timeout", "runtime_error", "compile_error", "skipped")
#: Seconds allowed on top of the per-test timeouts for the runner to start and finish.
STARTUP_SLACK_S = 10.0
_DETAIL_CHARS = 300


def runner_source() -> str:
    """The text of the in-sandbox runner script (without its docstrings: it is compiled at every run)."""
    return script_source("_apps_runner.py")


@dataclass(frozen=True)
class AppsTests:
    """One problem's tests in the APPS ``input_output`` layout: call-based when ``fn_name`` is set."""

    inputs: list
    outputs: list
    fn_name: str | None = None

    @property
    def call_based(self) -> bool:
        return bool(self.fn_name)

    def __len__(self) -> int:
        return len(self.inputs)

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "outputs": self.outputs, "fn_name": self.fn_name}

    @classmethod
    def parse(cls, value: Any, name: str = "tests") -> AppsTests:
        """From an :class:`AppsTests`, a mapping, or the JSON text of one; a malformed value is a
        :class:`DataError` naming ``name`` (e.g. the problem) and what was expected."""
        if isinstance(value, AppsTests):
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{name}: input_output is not valid JSON ({err.msg} at line {err.lineno} column "
                    f"{err.colno}): "
                    "expected a JSON object with 'inputs' and 'outputs' lists"
                ) from None
        if not isinstance(value, Mapping):
            raise DataError(
                f"{name}: input_output is a {type(value).__name__}: expected an object with 'inputs' and "
                "'outputs' lists"
            )
        inputs, outputs, fn_name = value.get("inputs"), value.get("outputs"), value.get("fn_name")
        if not isinstance(inputs, list) or not isinstance(outputs, list):
            raise DataError(
                f"{name}: input_output lacks 'inputs' or 'outputs' lists: expected both, of equal length"
            )
        if len(inputs) != len(outputs):
            raise DataError(
                f"{name}: input_output has {len(inputs)} inputs but {len(outputs)} outputs: expected equal "
                "counts"
            )
        if fn_name is not None and (not isinstance(fn_name, str) or not fn_name.isidentifier()):
            raise DataError(
                f"{name}: input_output fn_name={fn_name!r} is not a Python identifier: expected a function "
                "name"
            )
        return cls(inputs=inputs, outputs=outputs, fn_name=fn_name or None)


@dataclass(frozen=True)
class TestVerdict:
    """The verdict on one test, its time (None when it did not run) and a short detail for failures."""

    __test__ = False  # not a pytest test class, despite the name

    verdict: str
    time_s: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class ProgramResult:
    """All verdicts of one program on one problem."""

    verdicts: tuple[TestVerdict, ...]
    wall_s: float = 0.0
    mode: str = ""
    stopped_early: bool = False

    @property
    def n_tests(self) -> int:
        return len(self.verdicts)

    @property
    def n_passed(self) -> int:
        return sum(v.verdict == "pass" for v in self.verdicts)

    @property
    def test_case_average(self) -> float:
        """Fraction of tests passed (0 without tests): the APPS "test case average" of one problem."""
        return self.n_passed / self.n_tests if self.verdicts else 0.0

    @property
    def strict(self) -> bool:
        """Every test passed (and there is at least one): APPS "strict accuracy" of one problem."""
        return bool(self.verdicts) and self.n_passed == self.n_tests

    @property
    def compile_error(self) -> bool:
        return any(v.verdict == "compile_error" for v in self.verdicts)

    def counts(self) -> dict[str, int]:
        counted = Counter(v.verdict for v in self.verdicts)
        return {name: counted.get(name, 0) for name in VERDICTS}

    def first_problem(self) -> TestVerdict | None:
        """The first verdict that is not a pass, for reports."""
        return next((v for v in self.verdicts if v.verdict != "pass"), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdicts": [v.verdict for v in self.verdicts],
            "test_case_average": self.test_case_average,
            "strict": self.strict,
            "wall_s": self.wall_s,
            "mode": self.mode,
        }


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 3] + "..."


def _verdict(row: Mapping[str, Any], expected: Any, call_based: bool) -> TestVerdict:
    status, time_s = row.get("status"), row.get("time_s")
    if status == "ok":
        if call_based:
            try:
                actual = json.loads(row.get("result") or "null")
            except ValueError:
                return TestVerdict("runtime_error", time_s, "unreadable return value")
            ok = call_result_matches(actual, expected)
            shown = row.get("result") or ""
        else:
            shown = row.get("stdout") or ""
            ok = stdout_matches(shown, expected)
        if ok:
            return TestVerdict("pass", time_s)
        return TestVerdict("fail", time_s, _clip(f"got {shown[:200]!r}, expected {str(expected)[:200]!r}"))
    if status == "timeout":
        return TestVerdict("timeout", time_s, "time limit exceeded")
    if status == "output_limit":
        return TestVerdict("runtime_error", time_s, "output limit exceeded")
    if status == "load_error":
        return TestVerdict("compile_error", time_s, _clip(row.get("stderr") or "failed to load"))
    detail = row.get("stderr") or ""
    if row.get("signal"):
        detail = f"killed by signal {row['signal']}; {detail}"
    elif row.get("exit") not in (None, 0):
        detail = f"exit status {row['exit']}; {detail}"
    return TestVerdict("runtime_error", time_s, _clip(detail) or "no result")


def check_program(
    program: str,
    tests: Any,
    *,
    sandbox: Sandbox | None = None,
    per_test_timeout_s: float | None = None,
    stop_on_failure: bool = False,
) -> ProgramResult:
    """Run ``program`` on every test of ``tests`` (:class:`AppsTests` or its dict / JSON form) in the
    sandbox and return per-test verdicts. ``stop_on_failure`` ends the run at the first test that does not
    pass (the rest become ``skipped``): enough for strict accuracy, much faster for wrong programs."""
    require_code_execution()
    tests = AppsTests.parse(tests)
    if not isinstance(program, str):
        raise TypeError(f"program must be a string, got {type(program).__name__}")
    settings = execution_settings()
    sandbox = sandbox or Sandbox()
    timeout = float(per_test_timeout_s or settings.per_test_timeout_s)
    n = len(tests)
    if n == 0:
        return ProgramResult((), mode=sandbox.isolation.mode)
    call_based = tests.call_based
    inputs = tests.inputs if call_based else [_as_stdin(value) for value in tests.inputs]
    payload = {
        "program": program,
        "mode": "call" if call_based else "stdin",
        "fn_name": tests.fn_name,
        "inputs": inputs,
        "timeout_s": timeout,
        "output_bytes": sandbox.limits.output_bytes,
        "sweep": sandbox.isolation.can_sweep,
        "subreaper": sandbox.isolation.mode == "uid",
        "extra_sys_path": list(sandbox.isolation.extra_sys_path),
    }
    verdicts: dict[int, TestVerdict] = {}
    compile_error: list[str] = []
    malformed: list[str] = []
    pending = bytearray()

    def on_stdout(chunk: bytes) -> bool:
        pending.extend(chunk)
        stop = False
        while b"\n" in pending:
            line, _, rest = bytes(pending).partition(b"\n")
            pending[:] = rest
            stop = _take_line(line, tests, call_based, verdicts, compile_error, malformed) or stop
        return stop_on_failure and stop

    result = sandbox.run_python(
        runner_source(),
        json.dumps(payload).encode("utf-8"),
        timeout_s=n * (timeout + 0.5) + STARTUP_SLACK_S,
        on_stdout=on_stdout,
        # each test's line holds up to output_bytes of stdout and of the return value (JSON escaping can
        # grow text up to 6 times) plus the start of stderr
        output_bytes=n * (12 * sandbox.limits.output_bytes + (64 << 10)) + (64 << 10),
        init=False,  # the runner is PID 1 itself: it reaps the tests' orphans, and no test can signal it
        precompile=True,
    )
    if pending.strip():  # a last line without its newline may be cut short by a kill: not held against it
        _take_line(bytes(pending), tests, call_based, verdicts, compile_error)
    if malformed:  # the channel was tampered with: no row of this run can be trusted
        detail = _clip(f"malformed line from the runner: {malformed[0]}")
        rows = tuple(TestVerdict("runtime_error", None, detail) for _ in range(n))
        return ProgramResult(rows, result.wall_s, result.mode)
    if compile_error:
        rows = tuple(TestVerdict("compile_error", None, _clip(compile_error[0])) for _ in range(n))
        return ProgramResult(rows, result.wall_s, result.mode, stopped_early=False)
    if any(v.verdict == "compile_error" for v in verdicts.values()):
        load = next(v for v in verdicts.values() if v.verdict == "compile_error")
        rows = tuple(verdicts.get(i) or TestVerdict("compile_error", None, load.detail) for i in range(n))
        return ProgramResult(rows, result.wall_s, result.mode)
    if result.stopped_early:
        missing = TestVerdict("skipped", None, "not run: an earlier test failed")
    elif result.timed_out:
        missing = TestVerdict("timeout", None, "the run's overall time limit passed")
    else:
        reason = _clip(result.stderr.decode("utf-8", "replace")) or f"runner exit status {result.returncode}"
        missing = TestVerdict("runtime_error", None, f"no result from the runner: {reason}")
    rows = tuple(verdicts.get(i, missing) for i in range(n))
    return ProgramResult(rows, result.wall_s, result.mode, stopped_early=result.stopped_early)


def _as_stdin(value: Any) -> str:
    """APPS joins a list of input lines with newlines."""
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return str(value)


_ROW_TYPES: dict[str, tuple[type, ...]] = {
    "status": (str,),
    "stdout": (str, type(None)),
    "result": (str, type(None)),
    "stderr": (str, type(None)),
    "time_s": (int, float, type(None)),
    "exit": (int, type(None)),
    "signal": (int, type(None)),
}
_STATUSES = ("ok", "timeout", "runtime_error", "output_limit", "load_error")


def _well_formed(row: Any) -> bool:
    """A runner row as the runner writes it: a dict with an int ``test`` and fields of the expected types."""
    if not isinstance(row, dict):
        return False
    if "compile_error" in row:
        return isinstance(row["compile_error"], str)
    if type(row.get("test")) is not int or row.get("status") not in _STATUSES:
        return False
    return all(
        isinstance(row.get(name), types) and not isinstance(row.get(name), bool)
        for name, types in _ROW_TYPES.items()
    )


def _take_line(
    line: bytes,
    tests: AppsTests,
    call_based: bool,
    verdicts: dict[int, TestVerdict],
    compile_error: list[str],
    malformed: list[str] | None = None,
) -> bool:
    """Record one runner line; True when it is not a pass. A line that is not a well-formed row (the
    runner writes none: a program tampered with the channel) is added to ``malformed`` and is not a pass;
    nothing a line holds raises here."""
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        row = None
    if not _well_formed(row):
        if malformed is not None:
            malformed.append(_clip(line[:200].decode("utf-8", "replace")))
        return True
    if "compile_error" in row:
        compile_error.append(row["compile_error"])
        return True
    index = row["test"]
    if not 0 <= index < len(tests) or index in verdicts:
        return False
    try:
        verdict = _verdict(row, tests.outputs[index], call_based)
    except Exception as err:  # a comparison that cannot be made is no pass, never a crash of the run
        verdict = TestVerdict("fail", None, _clip(f"output could not be compared: {type(err).__name__}"))
    verdicts[index] = verdict
    return verdict.verdict != "pass"


def check_programs(
    items: Sequence[tuple[str, Any]],
    *,
    workers: int | None = None,
    sandbox: Sandbox | None = None,
    per_test_timeout_s: float | None = None,
    stop_on_failure: bool = False,
    progress: bool = False,
) -> list[ProgramResult]:
    """:func:`check_program` for each ``(program, tests)`` pair on a pool of ``workers`` (default: the
    configured ``workers``), results in input order; with ``progress``, a bar over the programs checked
    (:func:`p3bench.utils.progress.progress_bar`)."""
    require_code_execution()
    sandbox = sandbox or Sandbox()

    def check(item: tuple[str, Any]) -> ProgramResult:
        program, tests = item
        return check_program(
            program,
            tests,
            sandbox=sandbox,
            per_test_timeout_s=per_test_timeout_s,
            stop_on_failure=stop_on_failure,
        )

    return run_many(check, items, workers, progress=progress, desc="checking programs (APPS)")


# -------------------------------------------------------------------------------------------- evaluator

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)
_NEXT_PROMPT = re.compile(r"\n(?:QUESTION|ANSWER):\n")


def extract_program(text: str) -> str:
    """The program in a model's continuation: the first fenced block labelled Python (else the first fenced
    block) when there are markdown fences, else the text up to a following ``QUESTION:``/``ANSWER:`` line
    (a model trained on the APPS format may start another problem)."""
    blocks = _FENCE.findall(text)
    if blocks:
        for label, body in blocks:
            if label.lower() in ("python", "python3", "py"):
                return body
        return blocks[0][1]
    return _NEXT_PROMPT.split(text, maxsplit=1)[0]


def _example_tests(example: Example) -> AppsTests:
    if example.tests is None:
        raise DataError(
            f"example {example.id!r} has no tests: expected APPS input/output tests in example.tests"
        )
    return AppsTests.parse(example.tests, f"example {example.id!r}")


def evaluate_apps_detailed(
    generated_text: str, example: Example, *, stop_on_failure: bool = False
) -> ProgramResult:
    """Run the program in ``generated_text`` (the model's continuation) on ``example.tests``."""
    require_code_execution()
    return check_program(
        extract_program(generated_text), _example_tests(example), stop_on_failure=stop_on_failure
    )


def evaluate_apps(generated_text: str, example: Example) -> bool:
    """The ``apps`` evaluator: True iff the program passes every test (strict accuracy), stopping at the
    first failure. Refuses with :class:`~p3bench.execution.policy.CodeExecutionDisabledError` while code
    execution is switched off."""
    return evaluate_apps_detailed(generated_text, example, stop_on_failure=True).strict


def apps_details(generated_text: str, example: Example) -> dict[str, float | bool]:
    """Strict correctness and the test-case average (the fraction of tests passed) of one program: the
    numbers a run's test records keep for APPS (``evaluate_apps.details``)."""
    result = evaluate_apps_detailed(generated_text, example)
    return {"correct": result.strict, "test_case_average": result.test_case_average}


def apps_batch(pairs: Sequence[tuple[str, Example]], *, progress: bool = False) -> list[bool]:
    """Strict verdicts for many ``(generated_text, example)`` pairs, checked on the configured pool of
    workers (``evaluate_apps.batch``: how the pass-rate scorer checks k samples of many problems, with a bar
    over the programs when ``progress``; the test-time evaluation inside Lightning's loop shows none)."""
    items = [(extract_program(text), _example_tests(example)) for text, example in pairs]
    return [result.strict for result in check_programs(items, stop_on_failure=True, progress=progress)]


evaluate_apps.details = apps_details  # type: ignore[attr-defined]
evaluate_apps.batch = apps_batch  # type: ignore[attr-defined]
