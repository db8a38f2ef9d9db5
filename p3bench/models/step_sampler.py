"""Batches for methods that re-select every U optimiser steps, inside an epoch, with exact resume.

Lightning reloads train dataloaders only at epoch boundaries, so a round that starts mid-epoch is switched
to inside the batch sampler: each time a batch is drawn, :class:`StepScheduledBatchSampler` reads the live
optimiser step and, at the first draw with ``global_step // U == r``, starts round ``r`` (which selects it,
through the datamodule, with the model as trained so far). With ``num_workers=0`` and a sized loader,
Lightning draws exactly one batch per trained batch, after the previous batch's optimiser step.

The batches of a round are a pure function of ``(seed, round, pass)`` and the round's selection: pass ``p``
over the selection is the :class:`~p3bench.models.sampler.LengthGroupedBatchSampler` order of a generator
seeded from ``(seed, round, p)``. No generator state is carried from batch to batch, so the sampler's whole
state is its :class:`StreamPosition`, and a run resumed from a checkpoint taken mid-epoch draws the same
batches as one that never stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from p3bench.models.collate import EncodedPool, pool_item
from p3bench.models.sampler import LengthGroupedBatchSampler

#: a training item's key: (round, position in that round's selection)
RoundKey = tuple[int, int]


@dataclass
class StreamPosition:
    """Where the batch stream is: the round of the last batch drawn, the batches drawn in that round (over
    all epochs) and the batches drawn in the current epoch."""

    round: int = -1
    drawn_in_round: int = 0
    drawn_in_epoch: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamPosition:
        return cls(**{k: int(v) for k, v in data.items()})


def pass_seed(seed: int, round_index: int, pass_index: int) -> int:
    """The order generator's seed of one pass over a round's selection: a stable integer mix (not Python's
    salted ``hash``), as the per-epoch rounds' ``seed * 1_000_003 + round``."""
    return ((int(seed) * 1_000_003 + int(round_index)) * 1_000_003 + int(pass_index)) % (2**63 - 1)


class StepScheduledBatchSampler(torch.utils.data.Sampler[list[RoundKey]]):
    """Yield batches of :data:`RoundKey` for a method that re-selects every ``every_n_steps`` optimiser steps.

    Each epoch yields ``batches_per_epoch`` batches (one pass over a budget-sized selection, so an epoch
    trains on as many examples as a static method's at the same budget). Batch ``j`` of round ``r`` is batch
    ``j % n`` of pass ``j // n`` over round ``r``'s selection, ``n`` being the batches of one pass on this
    process; a round longer than a pass starts another pass with a fresh order.

    ``round_lengths(r)`` returns the token lengths of round ``r``'s selection (selecting it if needed);
    ``current_step()`` returns the trainer's ``global_step``. After :meth:`restore`, the next iteration
    yields only the rest of the interrupted epoch, as Lightning expects of a resumed loader.
    """

    def __init__(
        self,
        round_lengths: Callable[[int], Sequence[int]],
        current_step: Callable[[], int],
        every_n_steps: int,
        batches_per_epoch: int,
        batch_size: int,
        window_batches: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        position: StreamPosition | None = None,
    ) -> None:
        if every_n_steps < 1 or batches_per_epoch < 1:
            raise ValueError(
                f"every_n_steps={every_n_steps} and batches_per_epoch={batches_per_epoch} must be >= 1"
            )
        self.round_lengths = round_lengths
        self.current_step = current_step
        self.every_n_steps = int(every_n_steps)
        self.batches_per_epoch = int(batches_per_epoch)
        self.batch_size = int(batch_size)
        self.window_batches = int(window_batches)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.position = position if position is not None else StreamPosition()
        # a restored position continues its epoch once; every other iteration starts an epoch
        self._resume_epoch = position is not None and 0 < self.position.drawn_in_epoch < batches_per_epoch
        self._passes: dict[tuple[int, int], list[list[int]]] = {}

    def __len__(self) -> int:
        return self.batches_per_epoch

    def restore(self, position: StreamPosition) -> None:
        """Continue from ``position`` (a checkpoint's): the next iteration yields the rest of its epoch. An
        epoch the trainer ended early (``limit_train_batches``) is checkpointed with ``drawn_in_epoch=0``
        (:meth:`p3bench.methods.base.SelectionDataModule.state_dict`), so the next iteration is a whole one."""
        self.position = StreamPosition(**position.to_dict())
        self._resume_epoch = 0 < position.drawn_in_epoch < self.batches_per_epoch
        self._passes = {}

    def pass_batches(self, round_index: int, pass_index: int) -> list[list[int]]:
        """This process's batches (positions in the round's selection) of one pass over round ``round_index``."""
        key = (round_index, pass_index)
        if key not in self._passes:
            lengths = self.round_lengths(round_index)
            generator = torch.Generator().manual_seed(pass_seed(self.seed, round_index, pass_index))
            sampler = LengthGroupedBatchSampler(
                lengths, self.batch_size, generator, self.window_batches, self.rank, self.world_size
            )
            batches = list(sampler)
            if not batches:
                raise RuntimeError(
                    f"round {round_index} selected {len(lengths)} examples: too few for one batch of "
                    f"{self.batch_size} on each of {self.world_size} processes"
                )
            # keep only the current round's passes: earlier ones are never drawn again
            self._passes = {k: v for k, v in self._passes.items() if k[0] == round_index}
            self._passes[key] = batches
        return self._passes[key]

    def next_keys(self) -> list[RoundKey]:
        """Draw the next batch: start a new round when the optimiser step has reached one."""
        position = self.position
        round_index = self.current_step() // self.every_n_steps
        if round_index != position.round:
            position.round, position.drawn_in_round = round_index, 0
        first = self.pass_batches(round_index, 0)
        pass_index, offset = divmod(position.drawn_in_round, len(first))
        batch = self.pass_batches(round_index, pass_index)[offset] if pass_index else first[offset]
        position.drawn_in_round += 1
        position.drawn_in_epoch += 1
        return [(round_index, i) for i in batch]

    def __iter__(self) -> Iterator[list[RoundKey]]:
        if not self._resume_epoch:
            self.position.drawn_in_epoch = 0
        self._resume_epoch = False
        while self.position.drawn_in_epoch < self.batches_per_epoch:
            yield self.next_keys()


class RoundsDataset(torch.utils.data.Dataset):
    """Training items addressed by :data:`RoundKey`: ``(r, i)`` is the ``i``-th example of round ``r``'s
    selection, with that round's weight, so weights follow the round."""

    def __init__(self, pool: EncodedPool, round_items: Callable[[int], tuple[list[int], list[float] | None]]):
        self.pool = pool
        self.round_items = round_items

    def __getitem__(self, key: RoundKey) -> dict[str, Any]:
        round_index, position = key
        indices, weights = self.round_items(round_index)
        return pool_item(self.pool, indices[position], 1.0 if weights is None else weights[position])


class ResumableDataLoader(torch.utils.data.DataLoader):
    """A train loader that Lightning knows to be resumable mid-epoch (its ``_Stateful`` loader protocol): the
    datamodule's checkpointed state says where the epoch was, and its sampler continues from there (a
    step-scheduled sampler's :class:`StreamPosition`; a per-epoch sampler's skipped batches).

    ``state_dict`` holds the step-scheduled sampler's position, saved with the fit loop: ``position_state()``
    when given (the datamodule's, which records a position at the end of the trainer's epoch as at an epoch
    boundary), else the sampler's own. The datamodule's state stays the source of truth (it is restored
    before ``fit``, and Lightning builds the loader before it restores the fit loop when the learning-rate
    schedule asks for the stepping batches, in which case this state is never loaded); when it is loaded, it
    is only checked against the datamodule's."""

    def __init__(
        self, *args: Any, position_state: Callable[[], dict[str, int]] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.position_state = position_state

    def state_dict(self) -> dict[str, Any]:
        if self.position_state is not None:
            return {"position": self.position_state()}
        position = getattr(self.batch_sampler, "position", None)
        return {} if position is None else {"position": position.to_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("position")
        if saved is None:
            return
        current = self.batch_sampler.position.to_dict()
        if StreamPosition.from_dict(saved).to_dict() != current:
            raise RuntimeError(
                f"the checkpoint's loader position {saved} differs from its selection state's {current}: "
                "the checkpoint is inconsistent"
            )
