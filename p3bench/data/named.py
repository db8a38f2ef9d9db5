"""Examples of another dataset than the run's, named in a config block: the data a model has already seen
(DELIFT's continual stage, ``method.existing``) or the corpus a warm start pre-trains on
(``model.warm_start.dataset``). The block is ``{dataset: NAME, params: {...}, split: train, max_examples: N}``:
the dataset's loader and its parameters (as in ``conf/dataset/NAME.yaml``, ``data_files`` included), which
split, and at most how many of its examples (the first ones; null: all)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from p3bench.data.example import Example
from p3bench.errors import ConfigError

SPEC_KEYS = ("dataset", "params", "split", "max_examples")
SPLITS = ("train", "validation", "test")


def check_spec(spec: Mapping[str, Any] | None, key: str, keys: tuple[str, ...] = SPEC_KEYS) -> dict[str, Any]:
    """The block at config key ``key``, checked: a dataset name, known ``keys``, a known split, a count."""
    spec = dict(spec or {})
    if not spec.get("dataset"):
        raise ConfigError(
            f"{key}.dataset is required: expected the name of a dataset, e.g. {key}.dataset=alpaca"
        )
    unknown = sorted(set(spec) - set(keys))
    if unknown:
        raise ConfigError(f"{key} has unknown keys {unknown}: expected some of {', '.join(keys)}")
    split = str(spec.get("split") or "train")
    if split not in SPLITS:
        raise ConfigError(f"{key}.split={split!r} is not supported: expected one of {', '.join(SPLITS)}")
    limit = spec.get("max_examples")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"{key}.max_examples={limit!r} is invalid: expected an integer >= 1 or null")
    return {**spec, "split": split}


def examples_from_spec(spec: Mapping[str, Any] | None, key: str) -> list[Example]:
    """The examples the block at ``key`` names (:func:`check_spec`); an empty result is a one-line error."""
    from p3bench.data import load_dataset_splits

    spec = check_spec(spec, key)
    splits = load_dataset_splits(str(spec["dataset"]), **dict(spec.get("params") or {}))
    examples = list(getattr(splits, spec["split"]))
    if spec.get("max_examples") is not None:
        examples = examples[: int(spec["max_examples"])]
    if not examples:
        raise ConfigError(f"{key}: the {spec['split']} split of dataset {spec['dataset']!r} is empty")
    return examples
