"""Controls: selections whose effect is known in advance, so that a testbed can show it tells a good selection
from a bad one before any method is judged on it.

Both controls read the oracle fields that ``synthetic_math`` and ``text_mix`` plant in the train pool
(:data:`p3bench.data.example.ORACLE_META_KEYS`), which no other selection method may read
(``tests/test_oracle_isolation.py`` checks it). An example is a *planted defect* when any of its defect
fields is true: ``is_noisy`` (a wrong answer; ``synthetic_math``), ``is_junk`` (junk text) or
``is_duplicate`` (a near-duplicate copy). The original of a duplicate group carries ``dup_group`` but is not
a defect; the copies are. These are the defects the results count (``p3bench.results.PLANTED_DEFECTS``).

- ``oracle_clean`` (positive control): ``budget`` examples drawn uniformly without replacement from the
  pool's clean examples. It is ``random`` with the planted defects removed, so it should do at least as well.
- ``oracle_defects`` (negative control): ``round(defect_share * budget)`` examples drawn uniformly from the
  planted defects and the rest of the budget uniformly from the clean examples (``defect_share`` default
  0.5; a random subset holds about the pool's own share, ``noise_rate + duplicate_rate + junk_rate`` on
  ``synthetic_math``). It should do worse.

Both are static (one round) and drawn from the run's seed (the context's generator of ``(seed, 0)``, as
``random``), so the same seed gives the same selection and the same ``ids_sha256``. Each round's diagnostics
say what the pool held (``pool_clean``, ``pool_defects``) and what was drawn (``selected_defects``,
``selected_defect_share``). A dataset without the oracle fields is refused with one line.

Neither control comes from a paper. They answer the question DataDecide (arXiv 2504.11393) asks of small
experiments, whether they rank data choices correctly, with choices whose ranking is known in advance: a
testbed on which ``oracle_clean`` does not beat ``oracle_defects`` cannot rank subtler selections either.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from p3bench.data.example import ORACLE_DATASETS, Example
from p3bench.errors import ConfigError
from p3bench.methods.base import Selection, SelectionContext, SelectionDataModule

#: the oracle fields that mark a planted defect (true on the defective examples)
DEFECT_FIELDS = ("is_noisy", "is_junk", "is_duplicate")


def planted_defects(pool: Sequence[Example], method: str, dataset: str) -> np.ndarray:
    """A boolean per pool example: true for a planted defect (any of :data:`DEFECT_FIELDS` true).

    A one-line :class:`ConfigError` names ``method`` and ``dataset`` when a pool example carries none of the
    fields (the dataset plants no defects, or not on every example)."""
    lacking = sum(not any(field in ex.meta for field in DEFECT_FIELDS) for ex in pool)
    if lacking:
        which = (
            "has none" if lacking == len(pool) else f"lacks them on {lacking} of {len(pool)} pool examples"
        )
        raise ConfigError(
            f"method={method} needs a dataset with planted-defect oracle fields "
            f"({', '.join(ORACLE_DATASETS)}); dataset={dataset} {which}"
        )
    return np.array([any(bool(ex.meta.get(field)) for field in DEFECT_FIELDS) for ex in pool], dtype=bool)


class PlantedDefectControl(SelectionDataModule):
    """A control: ``n_defects`` of the budget drawn from the planted defects, the rest from the clean
    examples. Subclasses set ``n_defects`` and call :meth:`check_counts`."""

    name: ClassVar[str] = "planted_defect_control"
    #: a control, not a method to compare (``p3bench.methods.is_control``; report tables and wandb tags)
    control: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.defective = planted_defects(self.pool, self.name, self.splits.name)
        self.n_defects = 0

    @property
    def n_clean(self) -> int:
        return self.budget_size - self.n_defects

    def check_counts(self, key: str, remedy: str) -> None:
        """A one-line error naming ``key`` and what to change (``remedy``) when the pool holds too few planted
        defects or clean examples for the split."""
        have_defects = int(self.defective.sum())
        have_clean = len(self.pool) - have_defects
        for wanted, have, kind in (
            (self.n_defects, have_defects, "planted defects"),
            (self.n_clean, have_clean, "clean examples"),
        ):
            if wanted > have:
                raise ConfigError(
                    f"{key} asks for {wanted} {kind} in a budget of {self.budget_size}, but the pool of "
                    f"{len(self.pool)} (dataset={self.splits.name}) holds {have}: expected {remedy}"
                )

    def select(self, ctx: SelectionContext) -> Selection:
        defect_positions = np.flatnonzero(self.defective)
        clean_positions = np.flatnonzero(~self.defective)
        chosen = np.concatenate(
            [
                ctx.rng.choice(defect_positions, size=self.n_defects, replace=False),
                ctx.rng.choice(clean_positions, size=self.n_clean, replace=False),
            ]
        )
        return Selection(
            ids=[self.pool[i].id for i in sorted(chosen.tolist())],
            diagnostics={
                "pool_clean": len(clean_positions),
                "pool_defects": len(defect_positions),
                "selected_defects": self.n_defects,
                "selected_defect_share": self.n_defects / self.budget_size,
            },
        )


class OracleClean(PlantedDefectControl):
    """The positive control: ``budget`` examples drawn uniformly from the pool's examples without a planted
    defect (see the module docstring)."""

    name: ClassVar[str] = "oracle_clean"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.check_counts(f"budget={self.budget!r}", "a smaller budget")


class OracleDefects(PlantedDefectControl):
    """The negative control: ``round(defect_share * budget)`` examples drawn uniformly from the planted
    defects, the rest of the budget uniformly from the clean examples (see the module docstring).

    ``defect_share`` is a share in [0, 1] (default 0.5); the count is Python's ``round`` (halves to even, as
    the dataset's defect counts), so the selection's share of defects is exactly ``n_defects / budget``."""

    name: ClassVar[str] = "oracle_defects"

    def __init__(self, *args: Any, defect_share: float = 0.5, **kwargs: Any) -> None:
        if (
            isinstance(defect_share, bool)
            or not isinstance(defect_share, numbers.Real)
            or not math.isfinite(defect_share)
            or not 0 <= defect_share <= 1
        ):
            raise ConfigError(
                f"method.defect_share={defect_share!r} is invalid: expected a share of the budget in [0, 1]"
            )
        super().__init__(*args, **kwargs)
        self.defect_share = float(defect_share)
        self.n_defects = round(self.defect_share * self.budget_size)
        self.check_counts(
            f"method.defect_share={defect_share!r}", "another method.defect_share or a smaller budget"
        )
