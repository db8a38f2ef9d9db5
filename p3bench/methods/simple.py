"""The reference points every comparison needs: train on the whole pool, or on a uniform random subset."""

from __future__ import annotations

from p3bench.methods import METHODS
from p3bench.methods.base import Selection, SelectionContext, SelectionDataModule


@METHODS.register("full")
class FullData(SelectionDataModule):
    """All of the pool, every epoch. The budget is ignored (results record the effective fraction 1.0)."""

    name = "full"
    uses_budget = False

    def select(self, ctx: SelectionContext) -> Selection:
        return Selection(ids=[ex.id for ex in self.pool])


@METHODS.register("random")
class RandomSubset(SelectionDataModule):
    """A uniform random subset of ``budget`` examples without replacement, drawn once from the run's seed."""

    name = "random"

    def select(self, ctx: SelectionContext) -> Selection:
        chosen = ctx.rng.choice(len(self.pool), size=self.budget_size, replace=False)
        return Selection(ids=[self.pool[i].id for i in sorted(chosen.tolist())])
