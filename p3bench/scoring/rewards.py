"""Rewards computed with the live model on a reference set: how much a small sample of pool examples (a
*unit*) helps the model on held-out reference examples. Multi-agent data selection (Bai et al., arXiv
2410.08102, Eqs. 2-4) averages them per category of data to update each agent's weights.

Two kinds are registered in :data:`REWARDS`:

- ``lookahead`` (:class:`p3bench.scoring.lookahead.LookaheadReward`): the reference loss before minus after
  one optimiser step on the unit, on a scratch copy of the model (the public code's MATES-style influence);
- ``gradient`` (:class:`p3bench.scoring.gradient_alignment.GradientAlignmentReward`): the dot product (or
  cosine) of the unit's randomly projected per-example gradients with the projected reference gradient
  (Eq. 3 with ``H = I``, TracIn / LESS style).

Sign: **higher is better**, meaning the step the unit asks for lowers the reference loss (the direction the
paper's Eq. 2 maximises). The paper prints Eq. 3 with a leading minus sign (Koh and Liang's "change in
loss"); the sign here is fixed so that a positive reward means a helpful unit.

How a call goes (:meth:`Reward.__call__`)::

    units = [RewardUnit((3, 17, 42, 8), agent="domain", category="c4"), ...]
    reward = REWARDS.get("lookahead")(optimizer="train_state", lr=1e-3, clip=1.0)
    result = reward(module, optimizer, unit_batches(dm, units), reference_batches(dm, reference, 16),
                    dm.compute_ledger, progress=True)
    result.values            # float64, one per unit, in the order of ``units``

- The reference loss ``L_ref`` is the mean over reference examples of each example's mean target-token NLL
  (the training loss of :class:`p3bench.models.module.SelectionLM` with unit weights).
- The training state is never touched: the model's parameters, their ``.grad``, the optimiser's state, the
  global torch / numpy / ``random`` generators and the module's training mode are bitwise the same after a
  call. Every reward runs on a deep copy of the model in eval mode (no dropout, so no random draws).
- Under ``torch.distributed``, units are dealt round-robin to the processes (:func:`p3bench.scoring.base.shard`);
  each unit is computed whole on one process and the per-unit scalars are gathered, so two processes give
  bitwise the values one process gives. The reference pass the rewards start from (the loss before the
  step, the reference gradient) runs on every process.
- Compute is recorded in the ledger passed in as the run model's (:data:`p3bench.compute.RUN_MODEL`): every
  forward token (reference and unit passes) under ``selection_forward`` and every backward token under
  ``selection_backward``, each summed over processes (so every process records the same totals).
- A progress bar counts the units (``progress``; rank zero's share, :func:`p3bench.utils.progress.progress_bar`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from p3bench.compute import RUN_MODEL, SELECTION_BACKWARD, SELECTION_FORWARD, ComputeLedger, model_size
from p3bench.data.example import Example
from p3bench.models.collate import EncodedSubset, TrainCollator, encode_examples
from p3bench.models.losses import per_example_nll
from p3bench.registry import Registry
from p3bench.scoring.base import all_reduce_sum, gather_rows, length_buckets, shard
from p3bench.utils.progress import progress_bar

#: one collated batch (``TrainCollator`` keys: input_ids, attention_mask, labels, weight, index)
Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class RewardUnit:
    """A sample of pool examples whose effect on the reference set is measured together: ``indices`` into
    the train pool (repeats allowed, for a category smaller than a unit), and what it was drawn for
    (``agent`` and ``category``; carried along, not read by the rewards)."""

    indices: tuple[int, ...]
    agent: str | None = None
    category: Hashable | None = None

    def __post_init__(self) -> None:
        if not self.indices:
            raise ValueError("a reward unit needs at least one pool example")
        object.__setattr__(self, "indices", tuple(int(i) for i in self.indices))


@dataclass
class RewardResult:
    """The rewards of one call, aligned to the units it was given.

    ``values``: one float64 per unit, higher = the reference loss falls. ``reference_loss``: ``L_ref`` of the
    live model. ``reference_loss_after``: the look-ahead's ``L_ref`` after each unit's step (None for the
    gradient reward); the public code's transforms read it. ``forward_tokens`` / ``backward_tokens``: the
    tokens recorded in the ledger (summed over processes). ``seconds``: this process's wall time.
    """

    kind: str
    values: np.ndarray
    reference_loss: float
    reference_loss_after: np.ndarray | None = None
    forward_tokens: int = 0
    backward_tokens: int = 0
    seconds: float = 0.0
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The scalars a selection round logs (``reward.<key>``)."""
        return {
            "kind": self.kind,
            "reference_loss": float(self.reference_loss),
            "seconds": float(self.seconds),
            "forward_tokens": int(self.forward_tokens),
            "backward_tokens": int(self.backward_tokens),
            "units": len(self.values),
            **self.diagnostics,
        }


# batches ------------------------------------------------------------------------------------------------------


def unit_batches(datamodule: Any, units: Sequence[RewardUnit]) -> list[Batch]:
    """One batch per unit, collated as training collates (:class:`p3bench.models.collate.TrainCollator`: right
    padded, labels on the target tokens, cut at the datamodule's ``max_length``) from the encoded train pool."""
    collate = TrainCollator(datamodule.tokenizer.pad_token_id, datamodule.max_length)
    encoded = datamodule.encoded("train")
    return [collate(list(EncodedSubset(encoded, unit.indices))) for unit in units]


def reference_batches(datamodule: Any, reference: Sequence[Example], batch_size: int = 16) -> list[Batch]:
    """The reference examples in batches of at most ``batch_size``, grouped by length (longest first, as a
    scoring pass groups them) and collated as training collates. Deterministic."""
    if batch_size < 1:
        raise ValueError(f"reference batch_size={batch_size} must be >= 1")
    if not reference:
        raise ValueError("the reference set is empty: a reward needs at least one reference example")
    encoded = encode_examples(list(reference), datamodule.tokenizer)
    max_length = int(datamodule.max_length)
    lengths = [encoded.num_tokens(i, max_length) for i in range(len(encoded))]
    collate = TrainCollator(datamodule.tokenizer.pad_token_id, max_length)
    return [collate(list(EncodedSubset(encoded, b))) for b in length_buckets(lengths, batch_size)]


def batch_tokens(batches: Iterable[Batch]) -> int:
    """Non-padding tokens of ``batches`` (what a forward or backward pass over them processes)."""
    return sum(int(b["attention_mask"].sum()) for b in batches)


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device) for k, v in batch.items()}


# shared helpers -------------------------------------------------------------------------------------------


def training_model(module: Any) -> torch.nn.Module:
    """The causal LM of a :class:`SelectionLM` (a Lightning module's ``model``), or the model itself."""
    return module.model if isinstance(module, pl.LightningModule) else module


def scratch_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` in eval mode with no gradients: what a reward may change freely."""
    scratch = copy.deepcopy(model)
    scratch.eval()
    for p in scratch.parameters():
        p.grad = None
    return scratch


def batch_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Each example's mean target-token NLL, as training computes it (with the attention mask)."""
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).logits
    return per_example_nll(logits, batch["labels"])


@torch.no_grad()
def reference_loss(model: torch.nn.Module, batches: Sequence[Batch], device: torch.device) -> float:
    """``L_ref``: the mean over reference examples of their per-example losses, summed in float64 in a fixed
    order (so the same model and batches give the same bits)."""
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for batch in batches:
        losses = batch_loss(model, to_device(batch, device))
        total += losses.double().cpu().sum()
        count += losses.numel()
    return float(total / count)


class Reward:
    """A reward over units (see the module docstring). Subclasses implement :meth:`local_rewards`."""

    kind: str = "base"

    def local_rewards(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None,
        units: Sequence[Batch],
        reference: Sequence[Batch],
        bar: Any,
    ) -> tuple[dict[str, np.ndarray], float, int, int]:
        """This process's units: per-unit rows (``value``, optionally ``after``), ``L_ref`` of the live model,
        and the forward and backward tokens this process ran. Must leave ``model`` and ``optimizer`` alone."""
        raise NotImplementedError

    def __call__(
        self,
        module: Any,
        optimizer: torch.optim.Optimizer | None,
        units: Sequence[Batch],
        reference: Sequence[Batch],
        ledger: ComputeLedger | None = None,
        progress: bool = True,
    ) -> RewardResult:
        """The reward of every unit (``units``: :func:`unit_batches`; ``reference``: :func:`reference_batches`),
        with the live ``module`` (a :class:`SelectionLM` or a causal LM) and the training ``optimizer``
        (``SelectionContext.optimizer``; only the look-ahead with ``optimizer=train_state`` reads it)."""
        if not reference:
            raise ValueError("the reference set is empty: a reward needs at least one reference batch")
        start = time.perf_counter()
        model = training_model(module)
        positions, _, world = shard(len(units))
        mine = [units[p] for p in positions]
        with progress_bar(
            total=len(mine), desc=f"reward ({self.kind})", unit="unit", enabled=progress
        ) as bar:
            rows, before, forward, backward = self.local_rewards(model, optimizer, mine, reference, bar)
        rows = gather_rows(positions, rows, len(units), world)
        forward, backward = all_reduce_sum(forward), all_reduce_sum(backward)
        if ledger is not None:
            size = model_size(model)
            ledger.add(RUN_MODEL, SELECTION_FORWARD, size, forward)
            ledger.add(RUN_MODEL, SELECTION_BACKWARD, size, backward)
        after = rows.get("after")
        return RewardResult(
            kind=self.kind,
            values=np.asarray(rows["value"], dtype=np.float64).reshape(len(units)),
            reference_loss=before,
            reference_loss_after=None if after is None else np.asarray(after, dtype=np.float64),
            forward_tokens=forward,
            backward_tokens=backward,
            seconds=time.perf_counter() - start,
        )


REWARDS: Registry = Registry("reward")
REWARDS.register_lazy("lookahead", "p3bench.scoring.lookahead:LookaheadReward")
REWARDS.register_lazy("gradient", "p3bench.scoring.gradient_alignment:GradientAlignmentReward")


def build_reward(kind: str, **options: Any) -> Reward:
    """The reward registered as ``kind`` built with ``options``."""
    return REWARDS.get(kind)(**options)


__all__ = [
    "REWARDS",
    "Batch",
    "Reward",
    "RewardResult",
    "RewardUnit",
    "batch_loss",
    "batch_tokens",
    "build_reward",
    "reference_batches",
    "reference_loss",
    "scratch_copy",
    "training_model",
    "unit_batches",
]
