"""Length-grouped batching: shuffled batches of examples of similar length, so little compute is spent on
padding, while every epoch still sees the selection in a fresh random order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


class LengthGroupedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Yield batches of positions: shuffle all positions, cut them into windows of ``window_batches``
    batches, sort each window by length (longest first), cut it into batches, then shuffle the batches.

    Each epoch draws from ``generator``, so the order is reproducible from its seed. With
    ``window_batches=1`` this is plain shuffled batching. Under ``world_size`` processes every process draws
    the same batches (same generator seed) and keeps every ``world_size``-th one from ``rank``; the last
    incomplete round of batches is dropped so that all processes take the same number of steps.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        generator: torch.Generator,
        window_batches: int = 50,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1 or window_batches < 1:
            raise ValueError(f"batch_size={batch_size} and window_batches={window_batches} must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.generator = generator
        self.window = batch_size * window_batches
        self.rank = rank
        self.world_size = world_size
        #: the generator's state before the current epoch's shuffle (None before the first epoch), so a
        #: checkpoint taken mid-epoch can replay this epoch's order
        self.epoch_start_state: torch.Tensor | None = None
        #: batches of this process to leave out at the start of the next epoch (then reset): the rest of
        #: an epoch resumed from a mid-epoch checkpoint
        self.skip_batches = 0

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size) // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        self.epoch_start_state = self.generator.get_state()
        skip, self.skip_batches = self.skip_batches, 0
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        batches: list[list[int]] = []
        for start in range(0, len(order), self.window):
            window = sorted(order[start : start + self.window], key=lambda i: -self.lengths[i])
            batches.extend(window[k : k + self.batch_size] for k in range(0, len(window), self.batch_size))
        order_of_batches = torch.randperm(len(batches), generator=self.generator).tolist()
        usable = len(order_of_batches) - len(order_of_batches) % self.world_size
        for b in order_of_batches[self.rank : usable : self.world_size][skip:]:
            yield batches[b]
