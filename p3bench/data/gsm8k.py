"""GSM8K (Cobbe et al., 2021): grade-school word problems; the solution ends with a ``#### N`` line.

Records have ``question`` and ``answer`` (the worked solution, with ``<<48/2=24>>`` calculator annotations,
ending in ``#### N``). Each becomes an :class:`Example` with:

- ``id``: ``gsm8k-{index}`` (``gsm8k-test-{index}`` for a given test file), counting the good records from 0;
- ``prompt``: the question and a newline, nothing else;
- ``target``: the solution with the ``<<...>>`` annotations removed (``48/2 = <<48/2=24>>24`` becomes
  ``48/2 = 24``) and the final ``#### N`` line kept as written, so a model trained on it ends with ``#### N``;
- ``answer``: N without thousands separators (``#### 1,080`` -> ``"1080"``);
- ``meta``: ``level`` None (GSM8K has no levels), ``type`` None, ``n_steps`` (solution lines before ``####``).

Splits work as for MATH (:mod:`p3bench.data.math`): validation and test are carved from train (seeded,
stratified by ``n_steps``, capped at 6) unless given as files or a hub ``test_split``. For the hub dataset
use ``hub_id="openai/gsm8k"`` with ``hub_config="main"`` (the default).
"""

from __future__ import annotations

import re

from p3bench.data.example import DatasetSplits, Example
from p3bench.data.records import assemble_splits, read_source
from p3bench.eval.answers import gsm8k_answer

REQUIRED = ("question", "answer")
_CALCULATOR = re.compile(r"<<[^<>]*>>")


def strip_calculator_annotations(solution: str) -> str:
    """The solution without GSM8K's ``<<expression=result>>`` annotations."""
    return _CALCULATOR.sub("", solution)


def _validate(record: dict) -> str | None:
    for name in REQUIRED:
        if not isinstance(record[name], str):
            return f"field {name!r} is a {type(record[name]).__name__}: expected a string"
    if gsm8k_answer(record["answer"]) is None:
        return (
            "field 'answer' has no final '#### <number>' line: expected a GSM8K solution ending in '#### N'"
        )
    return None


def _to_example(record: dict, index: int, prefix: str) -> Example:
    solution = record["answer"]
    n_steps = len([line for line in solution.rsplit("####", 1)[0].splitlines() if line.strip()])
    return Example(
        id=f"{prefix}-{index}",
        prompt=record["question"] + "\n",
        target=strip_calculator_annotations(solution),
        answer=gsm8k_answer(solution),
        meta={"level": None, "type": None, "n_steps": n_steps},
    )


def load_gsm8k(
    data_files=None,
    hub_id: str | None = None,
    hub_config: str | None = "main",
    split: str = "train",
    val_size: int | float = 500,
    test_size: int | float = 1000,
    seed: int = 0,
    skip_bad: bool = False,
    max_train: int | None = None,
    test_split: str | None = None,
) -> DatasetSplits:
    """GSM8K splits from local files (``data_files``) or a hub dataset (``hub_id``); see the module docstring."""
    records, n_skipped, source = read_source(
        "gsm8k",
        data_files=data_files,
        hub_id=hub_id,
        hub_config=hub_config,
        split=split,
        test_split=test_split,
        required=REQUIRED,
        skip_bad=skip_bad,
        validate=_validate,
    )
    examples = {
        name: [
            _to_example(record, i, "gsm8k" if name == "train" else f"gsm8k-{name}")
            for i, record in enumerate(rows)
        ]
        for name, rows in records.items()
    }
    info = {
        "source": source,
        "n_records": sum(len(rows) for rows in records.values()),
        "n_skipped": n_skipped,
    }
    return assemble_splits(
        "gsm8k",
        examples,
        val_size=val_size,
        test_size=test_size,
        seed=seed,
        max_train=max_train,
        stratify_key=lambda ex: min(ex.meta["n_steps"], 6),
        info=info,
    )
