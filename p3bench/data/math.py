"""MATH (Hendrycks et al., 2021): competition problems with worked solutions, answer in the last ``\\boxed{}``.

Records have ``problem``, ``solution`` and, optionally, ``level`` (``"Level 3"``), ``type`` (the subject,
``"Algebra"``), ``unique_id`` and ``answer``. Each becomes an :class:`Example` with:

- ``id``: ``unique_id`` when present, else ``math-{index}`` (``math-test-{index}`` for a given test file),
  the index counting the source's good records from 0;
- ``prompt``: the problem text and a newline, nothing else (no instruction or few-shot prefix);
- ``target``: the solution as written;
- ``answer``: the record's ``answer`` field when present, else the last ``\\boxed{}`` of the solution;
- ``meta``: ``level`` (``"Level 3"`` -> 3; ``"Level ?"`` or missing -> None) and ``type``.

A record whose solution has no usable box (2 of the 7,500 MATH train problems have an empty ``\\boxed{}``)
keeps ``answer=None`` and stays in the train pool only, never in validation or test.

Validation and test are carved from the train source with :func:`make_splits` (seeded, stratified by
level) unless given: ``data_files={"train": ..., "test": ...}`` (and optionally ``validation``), or a hub
``test_split``; a given test split makes ``test_size`` unused. ``levels`` and ``types`` filter every split;
``max_train`` caps the train pool (seeded subset) after splitting.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from p3bench.data.example import DatasetSplits, Example
from p3bench.data.records import assemble_splits, read_source
from p3bench.errors import ConfigError
from p3bench.eval.answers import last_boxed
from p3bench.registry import unknown_name_message

REQUIRED = ("problem", "solution")


def parse_level(value: object) -> int | None:
    """``"Level 3"`` / ``"3"`` / ``3`` -> 3; anything else (``"Level ?"``, None) -> None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    match = (
        re.fullmatch(r"\s*(?:level\s*)?(\d+)\s*", str(value), flags=re.IGNORECASE)
        if value is not None
        else None
    )
    return int(match.group(1)) if match else None


def _validate(record: dict) -> str | None:
    for name in REQUIRED:
        if not isinstance(record[name], str):
            return f"field {name!r} is a {type(record[name]).__name__}: expected a string"
    for name in ("level", "type", "answer", "unique_id"):
        value = record.get(name)
        if value is not None and not isinstance(value, (str, int)):
            return f"field {name!r} is a {type(value).__name__}: expected a string"
    return None


def _to_example(record: dict, index: int, prefix: str) -> Example:
    given = record.get("answer")
    answer = (
        str(given).strip() if given is not None and str(given).strip() else last_boxed(record["solution"])
    )
    kind = record.get("type")
    return Example(
        id=str(record["unique_id"]) if record.get("unique_id") is not None else f"{prefix}-{index}",
        prompt=record["problem"] + "\n",
        target=record["solution"],
        answer=answer,
        meta={"level": parse_level(record.get("level")), "type": None if kind is None else str(kind)},
    )


def _as_list(value, name: str, kind: type) -> list | None:
    if value is None:
        return None
    values = [value] if isinstance(value, (str, int)) and not isinstance(value, bool) else value
    if not isinstance(values, Sequence) or isinstance(values, str) or not values:
        raise ConfigError(
            f"math {name}={value!r} is invalid: expected a {kind.__name__} or a non-empty list of them"
        )
    for item in values:
        if isinstance(item, bool) or not isinstance(item, kind):
            raise ConfigError(f"math {name} entry {item!r} is invalid: expected a {kind.__name__}")
    return list(values)


def filter_examples(examples: list[Example], levels, types) -> list[Example]:
    """The examples whose level is in ``levels`` and whose type is in ``types`` (None: no filter). A type that
    no example has is a :class:`ConfigError` (with the closest known type); types match case-insensitively."""
    level_list = _as_list(levels, "levels", int)
    type_list = _as_list(types, "types", str)
    if type_list is not None:
        known = sorted({ex.meta["type"] for ex in examples if ex.meta["type"] is not None})
        by_lower = {name.lower(): name for name in known}
        for name in type_list:
            if name.lower() not in by_lower:
                raise ConfigError(unknown_name_message("MATH type", name, known))
        wanted = {by_lower[name.lower()] for name in type_list}
        examples = [ex for ex in examples if ex.meta["type"] in wanted]
    if level_list is not None:
        examples = [ex for ex in examples if ex.meta["level"] in level_list]
    return examples


def load_math(
    data_files=None,
    hub_id: str | None = None,
    hub_config: str | None = None,
    split: str = "train",
    val_size: int | float = 500,
    test_size: int | float = 1000,
    seed: int = 0,
    skip_bad: bool = False,
    levels: int | list[int] | None = None,
    types: str | list[str] | None = None,
    max_train: int | None = None,
    test_split: str | None = None,
) -> DatasetSplits:
    """MATH splits from local files (``data_files``) or a hub dataset (``hub_id``); see the module docstring."""
    records, n_skipped, source = read_source(
        "math",
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
            _to_example(record, i, "math" if name == "train" else f"math-{name}")
            for i, record in enumerate(rows)
        ]
        for name, rows in records.items()
    }
    n_records = sum(len(rows) for rows in examples.values())
    examples = {name: filter_examples(rows, levels, types) for name, rows in examples.items()}
    if not examples["train"]:
        raise ConfigError(
            f"math levels={levels!r} types={types!r} leave no training examples: expected a wider filter"
        )
    info = {
        "source": source,
        "n_records": n_records,
        "n_skipped": n_skipped,
        "levels": levels,
        "types": types,
    }
    return assemble_splits(
        "math",
        examples,
        val_size=val_size,
        test_size=test_size,
        seed=seed,
        max_train=max_train,
        stratify_key=lambda ex: ex.meta["level"],
        info=info,
    )
