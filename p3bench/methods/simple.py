"""The reference points every comparison needs: train on the whole pool, on a uniform random subset drawn
once, or on a fresh uniform random subset every round (the control for re-selection)."""

from __future__ import annotations

from typing import Any

from p3bench.errors import ConfigError
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


@METHODS.register("random_dynamic")
class RandomEachRound(RandomSubset):
    """A fresh uniform random subset of ``budget`` examples every round: the control for re-selection.

    P3 (arXiv 2408.05541) and the other dynamic methods select ``budget`` of the pool again every
    ``reselect_every_n_epochs`` epochs, so over R rounds they train on more distinct examples than static
    ``random`` at the same per-round budget: re-drawing alone reaches about N (1 - (1 - b)^R) of a pool of N
    at budget fraction b. A gain of P3 over ``random`` therefore mixes three things: which examples it
    prefers (difficulty), how spread its picks are (the DPP's diversity), and that it re-draws at all. This
    method keeps only the last: it spends the same per-round budget and the same training compute, prefers
    nothing, and sees as many distinct examples as re-drawing gives, so "P3 beats ``random_dynamic``" is
    the part of the gain that re-drawing does not explain. The control is this bench's, not the paper's.

    Each round draws from the context's generator, seeded by the run's seed and the round
    (:meth:`SelectionDataModule.context`, as P3's per-round draws): a resumed run re-draws the same subsets,
    and round 0 is the subset static ``random`` draws with the same seed. Diagnostics per round:
    ``jaccard_previous_round`` (as P3 records it) and ``seen_fraction``, the share of the pool trained on
    in this round or an earlier one.
    """

    name = "random_dynamic"

    def __init__(self, *args: Any, reselect_every_n_epochs: int = 1, **kwargs: Any) -> None:
        every = reselect_every_n_epochs
        # with method.reselect_every_n_steps=U (and epochs 0) it is the control for step rounds
        step_scheduled = kwargs.get("reselect_every_n_steps", 0) and every == 0
        if not step_scheduled and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ConfigError(
                f"method.reselect_every_n_epochs={every!r} is invalid: expected an integer >= 1 "
                "(a subset drawn once is method=random)"
            )
        super().__init__(*args, reselect_every_n_epochs=reselect_every_n_epochs, **kwargs)

    def select(self, ctx: SelectionContext) -> Selection:
        selection = super().select(ctx)
        ids = set(selection.ids)
        earlier = [r for r in self.rounds if r.round < ctx.round]
        seen = ids.union(*(r.ids for r in earlier))
        selection.diagnostics["seen_fraction"] = len(seen) / len(self.pool)
        if earlier:
            previous = set(earlier[-1].ids)
            selection.diagnostics["jaccard_previous_round"] = len(previous & ids) / len(previous | ids)
        return selection
