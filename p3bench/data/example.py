"""The standard example every dataset adapter yields, and the split bundle an adapter returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

TASK_KINDS = ("qa", "code", "instruction", "lm")


@dataclass(frozen=True)
class Example:
    """One training or evaluation example.

    ``prompt`` is the conditioning text, ``target`` the text the loss is computed on, ``answer`` the
    checkable final answer (qa tasks), ``tests`` the test cases (code tasks). ``meta`` holds descriptive and
    oracle fields (``level``, ``type``, ``domain``; for synthetic data ``is_noisy``, ``dup_group``,
    ``is_junk``). Oracle fields are for reports only: selection methods must not read them.
    """

    id: str
    prompt: str
    target: str
    answer: str | None = None
    tests: Any = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ORACLE_META_KEYS = ("is_noisy", "dup_group", "is_junk", "is_duplicate", "clean_answer")


def is_oracle_field(name: object) -> bool:
    """Whether ``name`` is an oracle meta key: configuration checks use it to refuse a field that no
    selection method may read."""
    return name in ORACLE_META_KEYS


#: the datasets that plant defects and record them in oracle fields (what the controls need)
ORACLE_DATASETS = ("synthetic_math", "text_mix")


@dataclass
class DatasetSplits:
    """What a dataset adapter returns: the train pool, a validation split, a test split and the task kind."""

    name: str
    task: str
    #: a list, or an ArrowPool read lazily from disk (p3bench.data.arrow_pool)
    train: Sequence[Example]
    validation: list[Example]
    test: list[Example]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASK_KINDS:
            raise ValueError(f"task kind {self.task!r} is not one of {TASK_KINDS}")
