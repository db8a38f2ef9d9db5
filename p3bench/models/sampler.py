"""Length-grouped batching: shuffled batches of examples of similar length, so little compute is spent on
padding, while every epoch still sees the selection in a fresh random order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


class LengthGroupedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Yield batches of positions: shuffle all positions, cut them into windows of ``window_batches``
    batches, sort each window by length (longest first), cut it into batches, then shuffle the batches.

    Each epoch draws from ``generator``, so the order is reproducible from its seed. With
    ``window_batches=1`` this is plain shuffled batching.
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, generator: torch.Generator, window_batches: int = 50
    ) -> None:
        if batch_size < 1 or window_batches < 1:
            raise ValueError(f"batch_size={batch_size} and window_batches={window_batches} must be >= 1")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.generator = generator
        self.window = batch_size * window_batches

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        batches: list[list[int]] = []
        for start in range(0, len(order), self.window):
            window = sorted(order[start : start + self.window], key=lambda i: -self.lengths[i])
            batches.extend(window[k : k + self.batch_size] for k in range(0, len(window), self.batch_size))
        for b in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[b]
