"""APPS (Hendrycks et al., 2021, arXiv 2105.09938): Python programming problems checked by running tests.

Records follow the hendrycks/codeparrot layout: ``problem_id``, ``question``, ``solutions`` (JSON text of a
list of programs), ``input_output`` (JSON text of ``{"inputs": [...], "outputs": [...]}``, with ``fn_name``
for call-based problems), ``difficulty`` (``introductory``, ``interview`` or ``competition``), ``url`` and
``starter_code``. Each problem becomes :class:`Example` objects with:

- ``id``: ``apps-{problem_id}`` (``apps-test-{problem_id}`` for a given test source); a train example made
  from a further solution gets ``apps-{problem_id}-s{j}``;
- ``prompt``: the APPS paper's format (its ``generate_prompt``): ``"\\nQUESTION:\\n" + question``, then
  ``"\\n" + starter_code`` when there is starter code, then ``"\\nUse Call-Based format"`` (``fn_name`` set)
  or ``"\\nUse Standard Input format"``, then ``"\\nANSWER:\\n"``;
- ``target``: a reference solution (the first; with ``max_solutions_per_problem=N``, the train split gets
  one example per solution for the first N);
- ``answer``: None (programs are checked by their tests, not by an answer string);
- ``tests``: ``{"inputs", "outputs", "fn_name"}`` for :mod:`p3bench.execution.apps`;
- ``meta``: ``level`` (1 introductory, 2 interview, 3 competition), ``difficulty``, ``type``
  (``call_based`` or ``standard_input``), ``problem_id``, ``url``, ``n_tests``, ``n_solutions``.

Validation and test are carved from the train source by problem (all examples of a problem stay in one
split), seeded and stratified by difficulty, from the problems that have tests; problems without tests are
train-only and problems without solutions evaluation-only. ``data_files={"train": ..., "test": ...}`` or
a hub ``test_split`` gives the test split instead. A malformed ``input_output`` or ``solutions`` field is a
:class:`~p3bench.errors.DataError` naming the file, line and problem (unless ``skip_bad``).

Loading also sets the process-wide code-execution policy (:func:`p3bench.execution.configure_execution`):
``allow_code_execution`` (off by default) and ``execution`` (per-test timeout, sandbox limits, workers).
"""

from __future__ import annotations

import json
from typing import Any

from p3bench.data.example import DatasetSplits, Example
from p3bench.data.records import check_unique_ids, make_splits, read_source, subsample
from p3bench.errors import ConfigError, DataError
from p3bench.registry import unknown_name_message

REQUIRED = ("question", "solutions", "input_output")
DIFFICULTIES = {"introductory": 1, "interview": 2, "competition": 3}
# private keys where validation leaves the parsed JSON fields, so they are parsed once
_TESTS, _SOLUTIONS = "_p3bench_tests", "_p3bench_solutions"


def apps_prompt(question: str, starter_code: str | None, call_based: bool) -> str:
    """The prompt of the APPS paper (arXiv 2105.09938, its ``generate_prompt``)."""
    prompt = "\nQUESTION:\n" + question
    if starter_code:
        prompt += "\n" + starter_code
    prompt += "\nUse Call-Based format" if call_based else "\nUse Standard Input format"
    return prompt + "\nANSWER:\n"


def _problem_name(record: dict) -> str:
    pid = record.get("problem_id")
    return f"problem {pid}" if pid is not None else "problem (no problem_id)"


def parse_tests(value: Any, name: str) -> dict[str, Any] | None:
    """``input_output`` -> ``{"inputs", "outputs", "fn_name"}``, or None for an empty field (no tests)."""
    from p3bench.execution.apps import AppsTests

    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    tests = AppsTests.parse(value, name)
    return tests.to_dict() if len(tests) else None


def parse_solutions(value: Any, name: str) -> list[str]:
    """``solutions`` (JSON text of a list of programs, or the list) -> the list; ``""`` -> []."""
    if isinstance(value, str):
        if not value.strip():
            return []
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{name}: solutions is not valid JSON ({err.msg} at column {err.colno}): "
                "expected a JSON list of program strings"
            ) from None
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise DataError(f"{name}: solutions is a {type(value).__name__}: expected a list of program strings")
    return [s for s in value if s.strip()]


def _validate(record: dict) -> str | None:
    name = _problem_name(record)
    if not isinstance(record["question"], str):
        return f"{name}: field 'question' is a {type(record['question']).__name__}: expected a string"
    difficulty = record.get("difficulty")
    if difficulty is not None and difficulty not in DIFFICULTIES:
        return f"{name}: difficulty {difficulty!r} is unknown: expected one of {', '.join(DIFFICULTIES)}"
    starter = record.get("starter_code")
    if starter is not None and not isinstance(starter, str):
        return f"{name}: field 'starter_code' is a {type(starter).__name__}: expected a string"
    try:
        record[_TESTS] = parse_tests(record["input_output"], name)
        record[_SOLUTIONS] = parse_solutions(record["solutions"], name)
    except DataError as err:
        return str(err)
    return None


def _examples(record: dict, prefix: str, n_solutions: int) -> list[Example]:
    """One example per solution for the first ``n_solutions`` (at least one: an evaluation problem without
    solutions gets an empty target)."""
    tests, solutions = record[_TESTS], record[_SOLUTIONS]
    call_based = bool(tests and tests.get("fn_name"))
    difficulty = record.get("difficulty")
    pid = record.get("problem_id")
    meta = {
        "level": DIFFICULTIES.get(difficulty),
        "difficulty": difficulty,
        "type": "call_based" if call_based else "standard_input",
        "problem_id": pid,
        "url": record.get("url"),
        "n_tests": len(tests["inputs"]) if tests else 0,
        "n_solutions": len(solutions),
    }
    prompt = apps_prompt(record["question"], record.get("starter_code"), call_based)
    targets = solutions[:n_solutions] or [""]
    return [
        Example(
            id=f"{prefix}-{pid}" if j == 0 else f"{prefix}-{pid}-s{j}",
            prompt=prompt,
            target=target,
            answer=None,
            tests=tests,
            meta=dict(meta),
        )
        for j, target in enumerate(targets)
    ]


def _difficulty_list(difficulties: Any) -> list[str] | None:
    if difficulties is None:
        return None
    values = [difficulties] if isinstance(difficulties, str) else difficulties
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(
            f"apps difficulties={difficulties!r} is invalid: expected a difficulty or a non-empty list"
        )
    for value in values:
        if value not in DIFFICULTIES:
            raise ConfigError(unknown_name_message("APPS difficulty", value, list(DIFFICULTIES)))
    return list(values)


def load_apps(
    data_files=None,
    hub_id: str | None = None,
    hub_config: str | None = None,
    split: str = "train",
    val_size: int | float = 0.1,
    test_size: int | float = 0.2,
    seed: int = 0,
    skip_bad: bool = False,
    difficulties: str | list[str] | None = None,
    max_solutions_per_problem: int = 1,
    max_train: int | None = None,
    test_split: str | None = None,
    allow_code_execution: bool = False,
    execution: dict[str, Any] | None = None,
) -> DatasetSplits:
    """APPS splits from local files (``data_files``) or a hub dataset (``hub_id``, e.g. ``codeparrot/apps``
    with ``hub_config="all"``); see the module docstring."""
    from p3bench.execution.policy import configure_execution

    n_solutions = max_solutions_per_problem
    if isinstance(n_solutions, bool) or not isinstance(n_solutions, int) or n_solutions < 1:
        raise ConfigError(
            f"apps max_solutions_per_problem={n_solutions!r} is invalid: expected an integer >= 1"
        )
    if execution is not None and not isinstance(execution, dict):
        raise ConfigError(
            f"apps execution={execution!r} is invalid: expected a mapping of execution settings"
        )
    configure_execution(allow_code_execution, **(execution or {}))
    wanted = _difficulty_list(difficulties)
    records, n_skipped, source = read_source(
        "apps",
        data_files=data_files,
        hub_id=hub_id,
        hub_config=hub_config,
        split=split,
        test_split=test_split,
        required=REQUIRED,
        skip_bad=skip_bad,
        validate=_validate,
    )
    n_records = sum(len(rows) for rows in records.values())
    if wanted is not None:
        records = {name: [r for r in rows if r.get("difficulty") in wanted] for name, rows in records.items()}
    pool = records["train"]
    if not pool:
        raise ConfigError(
            f"apps difficulties={difficulties!r} leave no training problems: expected a wider filter"
        )
    evaluable = [r for r in pool if r[_TESTS] is not None]
    try:
        train_problems, val_problems, test_problems = make_splits(
            evaluable,
            val_size=0 if "validation" in records else val_size,
            test_size=0 if "test" in records else test_size,
            seed=seed,
            stratify_key=lambda r: DIFFICULTIES.get(r.get("difficulty")),
        )
    except ConfigError as err:
        raise ConfigError(f"apps ({len(evaluable)} problems with tests to split): {err}") from None
    held_out = {id(r) for r in val_problems + test_problems}
    train_records = [r for r in pool if id(r) not in held_out and r[_SOLUTIONS]]
    train = [ex for r in train_records for ex in _examples(r, "apps", max_solutions_per_problem)]
    train = subsample(train, max_train, seed)

    def evaluation(rows: list[dict], prefix: str) -> list[Example]:
        return [_examples(r, prefix, 1)[0] for r in rows if r[_TESTS] is not None]

    validation = evaluation(
        records.get("validation", val_problems), "apps-val" if "validation" in records else "apps"
    )
    test = evaluation(records.get("test", test_problems), "apps-test" if "test" in records else "apps")
    check_unique_ids("apps", (*train, *validation, *test), "unique problem_id values")
    if not train:
        raise DataError(f"apps: no training problem has a solution in {source}: expected reference solutions")
    info = {
        "source": source,
        "n_records": n_records,
        "n_skipped": n_skipped,
        "n_no_tests": sum(r[_TESTS] is None for r in pool),
        "n_no_solutions": sum(not r[_SOLUTIONS] for r in pool),
        "difficulties": wanted,
        "max_solutions_per_problem": max_solutions_per_problem,
        "test_from": "given" if "test" in records else "train",
        "validation_from": "given" if "validation" in records else "train",
        "allow_code_execution": allow_code_execution,
    }
    return DatasetSplits(name="apps", task="code", train=train, validation=validation, test=test, info=info)
