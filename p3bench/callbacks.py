"""Callbacks the run adds: the iso-compute token budget."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl


class TokenBudget(pl.Callback):
    """Stop training once ``target_tokens`` training tokens (non-padding input tokens) have been processed.

    This is the iso-compute regime: every budget trains on the same number of tokens. At setup the step
    count is estimated from the mean length of the current selection (the pool's, before a dynamic method's
    first round) so that the learning-rate schedule spans the run; the token count then ends it exactly.
    """

    def __init__(self, target_tokens: int) -> None:
        self.target_tokens = int(target_tokens)
        self.estimated_steps: int | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        datamodule: Any = trainer.datamodule
        pool = datamodule.encoded("train")
        indices = (
            [datamodule.index_of[i] for i in datamodule.rounds[-1].ids]
            if datamodule.rounds
            else range(len(pool))
        )
        mean_tokens = sum(pool.num_tokens(i, datamodule.max_length) for i in indices) / max(1, len(indices))
        tokens_per_step = mean_tokens * datamodule.batch_size * max(1, trainer.accumulate_grad_batches)
        tokens_per_step *= max(1, trainer.world_size)
        self.estimated_steps = max(1, math.ceil(self.target_tokens / tokens_per_step))
        trainer.fit_loop.epoch_loop.max_steps = self.estimated_steps

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ):
        if pl_module.train_tokens * max(1, trainer.world_size) >= self.target_tokens:
            trainer.should_stop = True
