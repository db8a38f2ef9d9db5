"""Hard-sample reweighting inside each batch: IR-DRO and MidRanking (Chen et al., arXiv 2402.14270).

Both methods train on the whole pool (the budget is ignored, as for ``full``, and results record the
fraction 1.0) and change only how a batch's per-example losses ``l_i`` (mean NLL over each example's target
tokens) are combined into the training loss ``sum_i w_i * l_i``, with weights computed from the detached
losses (:mod:`p3bench.algorithms.reweighting`):

- ``irdro``: ``w = softmax(l / r)``, the closed-form solution of the KL-regularised inner DRO problem; the
  public code's default ``r = 1``.
- ``midranking``: rank the batch's losses in descending order and back-propagate the mean of the band
  ``[position * c, (position + 1) * c)`` with ``c = max(1, int(fraction * B))``; the rest get weight 0.
  ``position = 0`` is the hardest band (the public code's default), ``position >= 1`` the "moderately high"
  losses the paper argues for (its chosen band is not recoverable from the public material; the default
  here, ``fraction = 0.125, position = 1``, skips the hardest eighth and trains on the next).

Options shared by both:

- ``length_grouping``: how the training batches are drawn, since the weights compare the examples of one
  batch. ``1`` (the default, as the public code's random batches): plain shuffling, every batch a uniform
  draw from the pool. ``k > 1``: the run's length-grouped batching (each window of ``k`` batches sorted by
  length before it is cut into batches). On ``synthetic_math`` length follows difficulty level, so grouped
  batches hold examples of nearly one level and the weights then compare examples of that level only (flatter
  IR-DRO weights, no shift of the weight towards harder levels, less weight on planted junk; measured in
  ``experiments/irdro/README.md``). In the config ``null`` follows ``loader.length_grouping``; the value in
  force is in the results (``selection.reweighting.length_grouping``).
- ``normalise``: ``device`` (the public code: each process normalises over its own micro-batch) or
  ``global`` (all-gather the losses of every process and normalise over the global batch; each process's
  coefficients are its slice, multiplied by the world size because data-parallel training averages the
  processes' gradients). Identical on one process.
- ``burn_in_steps``: plain ERM (uniform weights) for the first optimizer steps (the ICLR 2025 follow-up of
  the same authors uses 1,000; the released IR-DRO code has none, the default 0).
- ``accumulate_micro_batches``: with ``trainer.accumulate_grad_batches = k``, one softmax (or one ranking)
  over the ``k`` micro-batches of an optimizer step and one backward through all of them, as the public
  code's ``--patience k`` (memory: ``k`` graphs are kept). Off: each micro-batch is weighted on its own.

Every training step logs ``weights/entropy``, ``weights/max_weight``, ``weights/effective_sample_size`` and
``weights/ess_fraction`` of the weights (over the global batch under ``normalise=global``), and, when the
dataset plants defects with oracle fields (``synthetic_math``: ``is_noisy``, ``is_junk``; ``text_mix``:
``is_junk``, ``is_duplicate``), the weight mass on them (``weights/mass_noisy``) next to their share of the
batch (``weights/share_noisy``, the mass uniform weights would give). Oracle fields are read for these
logs only, never for the weights. The run's means of these go to the results (``selection.reweighting``).

Departures from the public code: the MidRanking band is at least one example (``int(frac * B)`` is 0 for
small batches there); a batch too small for the band (the short last batch of an epoch) trains on its
lowest-ranked full band instead, counted as ``clamped_batches``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist

from p3bench.algorithms.reweighting import (
    check_fraction,
    check_position,
    check_temperature,
    gather_vectors,
    irdro_weights,
    midranking_band_size,
    midranking_weights,
    weight_stats,
)
from p3bench.data.example import Example
from p3bench.errors import ConfigError
from p3bench.methods.base import Selection, SelectionContext, SelectionDataModule
from p3bench.methods.options import choice

NORMALISATIONS = ("device", "global")
#: Oracle fields of planted defects whose weight mass is logged (``meta[field]`` True), by metric name.
ORACLE_FIELDS = {"noisy": "is_noisy", "junk": "is_junk", "duplicate": "is_duplicate"}


def planted_defect_masks(pool: Sequence[Example]) -> dict[str, np.ndarray]:
    """Per kind of planted defect the pool holds, a boolean per pool example (``meta[field]`` true): for the
    weight-mass logs only (``weights/mass_<kind>``), never for the weights."""
    return {
        metric: np.array([bool(ex.meta.get(field)) for ex in pool])
        for metric, field in ORACLE_FIELDS.items()
        if any(ex.meta.get(field) for ex in pool)
    }


class InBatchReweighting(SelectionDataModule):
    """The whole pool, each batch's losses reweighted by :meth:`batch_weights`, over random batches unless
    ``length_grouping > 1`` (the base class's default is the loader's grouping, 50). See the module
    docstring."""

    name: ClassVar[str] = "in_batch"
    uses_budget = False

    def __init__(
        self,
        *args: Any,
        normalise: str = "device",
        burn_in_steps: int = 0,
        accumulate_micro_batches: bool = False,
        length_grouping: int = 1,
        **kwargs: Any,
    ) -> None:
        if isinstance(length_grouping, bool) or not isinstance(length_grouping, int) or length_grouping < 1:
            raise ConfigError(
                f"method.length_grouping={length_grouping!r}: expected an integer >= 1 (1: random batches) "
                "or null (loader.length_grouping)"
            )
        super().__init__(*args, length_grouping=length_grouping, **kwargs)
        self.normalise = choice("normalise", normalise, NORMALISATIONS)
        if isinstance(burn_in_steps, bool) or not isinstance(burn_in_steps, int) or burn_in_steps < 0:
            raise ConfigError(f"method.burn_in_steps={burn_in_steps!r}: expected an integer >= 0")
        self.burn_in_steps = int(burn_in_steps)
        if not isinstance(accumulate_micro_batches, bool):
            raise ConfigError(
                f"method.accumulate_micro_batches={accumulate_micro_batches!r}: expected true or false"
            )
        self.accumulate_micro_batches = accumulate_micro_batches
        self._oracle = planted_defect_masks(self.pool)
        self._totals: dict[str, float] = {}
        self._batches = 0
        self.last_weight_metrics: dict[str, float] = {}

    # what subclasses implement ---------------------------------------------------------------------------------
    def batch_weights(self, losses: torch.Tensor) -> torch.Tensor:
        """Non-negative weights summing to one over ``losses`` (the batch being normalised), detached."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The method's own options, for the results."""
        return {}

    # the contract ------------------------------------------------------------------------------------------------
    def select(self, ctx: SelectionContext) -> Selection:
        return Selection(ids=[ex.id for ex in self.pool], diagnostics={"reweighting": self.describe()})

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.name,
            **self.settings(),
            "normalise": self.normalise,
            "burn_in_steps": self.burn_in_steps,
            "accumulate_micro_batches": self.accumulate_micro_batches,
            "length_grouping": self.length_grouping,
        }

    def setup(self, stage: str | None = None) -> None:
        trainer = self.trainer
        if self.accumulate_micro_batches and trainer is not None and trainer.accumulate_grad_batches < 2:
            raise ConfigError(
                "method.accumulate_micro_batches=true weights the micro-batches of one optimizer step together: "
                f"expected trainer.accumulate_grad_batches >= 2, got {trainer.accumulate_grad_batches}"
            )
        super().setup(stage)

    @property
    def groups_micro_batches(self) -> bool:
        """Whether the model should weight all micro-batches of an optimizer step together."""
        return self.accumulate_micro_batches

    def reweight(self, losses: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Coefficients of the batch's per-example losses (detached), and the step's weight metrics."""
        losses = losses.detach()
        index = batch["index"].to(losses.device)
        world = 1
        start = 0
        every, every_index = losses, index
        if self.normalise == "global" and dist.is_available() and dist.is_initialized():
            world = dist.get_world_size()
            every, start = gather_vectors(losses.float())
            every_index, _ = gather_vectors(index.long())
        if self._in_burn_in():
            weights = torch.full_like(every, 1.0 / every.numel(), dtype=torch.float32)
        else:
            weights = self.batch_weights(every).float()
        self._record(weights, every_index)
        return (weights[start : start + losses.numel()] * world).to(losses.dtype)

    def _in_burn_in(self) -> bool:
        trainer = self.trainer
        step = int(trainer.global_step) if trainer is not None else 0
        return step < self.burn_in_steps

    # weight metrics --------------------------------------------------------------------------------------------
    def _record(self, weights: torch.Tensor, index: torch.Tensor) -> None:
        metrics = weight_stats(weights)
        positions = index.cpu().numpy()
        w = weights.double().cpu().numpy()
        w = w / w.sum()
        for metric, flags in self._oracle.items():
            planted = flags[positions]
            metrics[f"mass_{metric}"] = float(w[planted].sum())
            metrics[f"share_{metric}"] = float(planted.mean())
        self.last_weight_metrics = metrics
        self._batches += 1
        for key, value in metrics.items():
            self._totals[key] = self._totals.get(key, 0.0) + value

    def weight_metrics(self) -> dict[str, float]:
        """The metrics of the last weighted batch, for the model to log as ``weights/<name>``."""
        return dict(self.last_weight_metrics)

    def reweighting_summary(self) -> dict[str, Any]:
        """The method's settings and the mean of every weight metric over the weighted batches so far."""
        means = {f"mean_{k}": v / self._batches for k, v in self._totals.items()} if self._batches else {}
        return {**self.describe(), "weighted_batches": self._batches, **means}

    def method_state(self) -> dict[str, Any]:
        return {"totals": dict(self._totals), "batches": self._batches}

    def load_method_state(self, state: dict[str, Any]) -> None:
        self._totals = {str(k): float(v) for k, v in state.get("totals", {}).items()}
        self._batches = int(state.get("batches", 0))


class IRDRO(InBatchReweighting):
    """Instance-reweighted DRO (arXiv 2402.14270): ``softmax(losses / temperature)`` over each batch.

    ``temperature`` is the public code's ``--kl_reg`` ``r`` (default 1.0): large values approach ERM, small
    ones put all the weight on the highest loss. See the module docstring for the shared options.
    """

    name = "irdro"

    def __init__(self, *args: Any, temperature: float = 1.0, **kwargs: Any) -> None:
        self.temperature = check_temperature(temperature)
        super().__init__(*args, **kwargs)

    def batch_weights(self, losses: torch.Tensor) -> torch.Tensor:
        return irdro_weights(losses, self.temperature)

    def settings(self) -> dict[str, Any]:
        return {"temperature": self.temperature}


class MidRanking(InBatchReweighting):
    """MidRanking (arXiv 2402.14270): the mean loss of one rank band of each batch, the rest weight 0.

    ``fraction`` sets the band size ``c = max(1, int(fraction * B))``, ``position`` which band (0: the
    hardest; the default 1 skips it). ``fraction = 1, position = 0`` is ERM. See the module docstring.
    """

    name = "midranking"

    def __init__(self, *args: Any, fraction: float = 0.125, position: int = 1, **kwargs: Any) -> None:
        self.fraction = check_fraction(fraction)
        self.position = check_position(position)
        self.clamped_batches = 0
        super().__init__(*args, **kwargs)
        if self.fraction == 1.0 and self.position > 0:
            raise ConfigError(
                f"method.position={self.position} with method.fraction=1.0: the band is the whole batch, "
                "expected position=0"
            )

    def batch_weights(self, losses: torch.Tensor) -> torch.Tensor:
        c = midranking_band_size(losses.numel(), self.fraction)
        position = min(self.position, losses.numel() // c - 1)
        if position != self.position:
            self.clamped_batches += 1
        return midranking_weights(losses, self.fraction, position)

    def settings(self) -> dict[str, Any]:
        return {"fraction": self.fraction, "position": self.position}

    def reweighting_summary(self) -> dict[str, Any]:
        return {**super().reweighting_summary(), "clamped_batches": self.clamped_batches}

    def method_state(self) -> dict[str, Any]:
        return {**super().method_state(), "clamped_batches": self.clamped_batches}

    def load_method_state(self, state: dict[str, Any]) -> None:
        super().load_method_state(state)
        self.clamped_batches = int(state.get("clamped_batches", 0))
