"""A pool from one dataset, the validation and test splits from another: the setting of task-specific
fine-tuning (DELIFT, arXiv 2411.04425, use case 2: select from a general pool what helps a target task, and
judge it on that task). The target set a method reads (``self.target``, the validation split) is the target
task's, so is the test split; the pool is the source's train split.

``dataset=instruction_transfer`` pairs an Alpaca pool with GSM8K as the target task by default::

    pool:   {dataset: alpaca, params: {...}}
    target: {dataset: gsm8k_instruct, params: {...}}

Both must have the same task kind (a pool of instructions and a target of instructions); the target's
settings of the evaluation of responses (``info["response_evaluation"]``) are the run's. Example ids stay
those of each dataset (they cannot collide as long as the two datasets' prefixes differ; a collision is an
error).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from p3bench.data.example import DatasetSplits
from p3bench.data.named import check_spec
from p3bench.errors import ConfigError


def _component(role: str, spec: Mapping[str, Any] | None) -> DatasetSplits:
    from p3bench.data import load_dataset_splits

    spec = check_spec(spec, f"dataset.params.{role}", keys=("dataset", "params"))
    name = spec["dataset"]
    if name == "instruction_transfer":
        raise ConfigError(f"dataset.params.{role}.dataset=instruction_transfer cannot nest itself")
    return load_dataset_splits(str(name), **dict(spec.get("params") or {}))


def load_transfer(
    pool: Mapping[str, Any] | None = None, target: Mapping[str, Any] | None = None
) -> DatasetSplits:
    """The train split of ``pool``'s dataset with the validation and test splits of ``target``'s."""
    source, task = _component("pool", pool), _component("target", target)
    if source.task != task.task:
        raise ConfigError(
            f"dataset.params.target.dataset={task.name!r} is a {task.task!r} task but the pool "
            f"({source.name!r}) is {source.task!r}: expected the same task kind"
        )
    if not task.validation:
        raise ConfigError(
            f"dataset.params.target.dataset={task.name!r} has an empty validation split: expected the target "
            "set (set its val_size)"
        )
    pool_ids = {ex.id for ex in source.train}
    clash = next((ex.id for ex in (*task.validation, *task.test) if ex.id in pool_ids), None)
    if clash is not None:
        raise ConfigError(
            f"dataset.params: example id {clash!r} is in both the pool ({source.name}) and the target "
            f"({task.name}): expected datasets with distinct ids"
        )
    return DatasetSplits(
        name=f"{source.name}->{task.name}",
        task=source.task,
        train=source.train,
        validation=task.validation,
        test=task.test,
        info={
            "pool": {"name": source.name, **source.info},
            "target": {"name": task.name, **task.info},
            # the test split is the target's, so is how its responses are judged
            **({k: task.info[k] for k in ("response_evaluation",) if k in task.info}),
        },
    )
