"""Callbacks the run adds: the iso-compute token budget, and the run state every checkpoint records."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl

from p3bench.resume import CHECKPOINT_KEY


class TokenBudget(pl.Callback):
    """Stop training once ``target_tokens`` training tokens (non-padding input tokens) have been processed.

    This is the iso-compute regime: every budget trains on the same number of tokens. At setup the step
    count is estimated from the lengths of the selection a fresh run starts with (a static method's, the
    pool's for a dynamic method, which has not selected yet) so that the learning-rate schedule spans the
    run; the token count then ends it at the first step that reaches the target.

    The estimate is checkpointed with the target it was made for: a resumed run (its rounds restored before
    setup) takes the checkpoint's, so its schedule is the uninterrupted run's. Lightning restores callbacks
    after ``setup`` and before ``configure_optimizers`` builds the schedule (``Trainer._run``), so
    :meth:`on_load_checkpoint` still sets the step limit in time (strategies that restore after their setup,
    FSDP and DeepSpeed, restore it too late for the schedule, which is why setup itself estimates from what
    a fresh run has, not from restored rounds). A resume with another target (more ``trainer.max_epochs``)
    keeps the new estimate.
    """

    def __init__(self, target_tokens: int) -> None:
        self.target_tokens = int(target_tokens)
        self.estimated_steps: int | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        datamodule: Any = trainer.datamodule
        # a dynamic method's restored rounds are not what a fresh run estimated from
        indices = (
            [datamodule.index_of[i] for i in datamodule.rounds[-1].ids]
            if datamodule.rounds and not datamodule.is_dynamic
            else range(len(datamodule.pool))
        )
        lengths: Sequence[float] = datamodule.token_lengths(indices)
        if datamodule.is_step_scheduled:
            # its epochs are passes over budget-sized selections (the last batch of each partial), not over
            # the pool: a pool-sized epoch overestimates the tokens of a step when the budget is not a
            # multiple of the batch size, and the run would stop at the step limit short of its tokens
            mean_length = sum(lengths) / max(1, len(lengths))
            lengths = [mean_length] * max(1, int(datamodule.budget_size))
        self.estimated_steps = estimate_steps(
            lengths,
            self.target_tokens,
            datamodule.batch_size * max(1, trainer.world_size),
            max(1, trainer.accumulate_grad_batches),
        )
        trainer.fit_loop.epoch_loop.max_steps = self.estimated_steps

    def state_dict(self) -> dict[str, Any]:
        return {"target_tokens": self.target_tokens, "estimated_steps": self.estimated_steps}

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        saved = checkpoint.get("callbacks", {}).get(self.state_key)
        if not saved or saved.get("estimated_steps") is None:
            return  # a checkpoint from before the estimate was saved: keep setup's
        if int(saved["target_tokens"]) == self.target_tokens:
            self.estimated_steps = int(saved["estimated_steps"])
            trainer.fit_loop.epoch_loop.max_steps = self.estimated_steps

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ):
        # every process sees the same global count, so they all stop at the same step
        if pl_module.global_counters()["train_tokens"] >= self.target_tokens:
            trainer.should_stop = True


def estimate_steps(lengths: Sequence[float], target_tokens: int, batch_size: int, accumulate: int = 1) -> int:
    """Optimizer steps to process ``target_tokens`` by passing repeatedly over examples of ``lengths``:
    whole epochs (each ``ceil(n / batch_size)`` batches, the last one partial) plus the remainder at the
    mean batch size, plus a margin (2% and one step) so that the token target, not the step limit, ends
    the run even when length-grouped batches of the last epoch are shorter than average. Results record
    whether the target was reached."""
    epoch_tokens = max(1, sum(lengths))
    batches_per_epoch = math.ceil(len(lengths) / batch_size)
    full_epochs, remainder = divmod(target_tokens, epoch_tokens)
    mean_batch_tokens = epoch_tokens / batches_per_epoch
    batches = full_epochs * batches_per_epoch + math.ceil(remainder / mean_batch_tokens)
    steps = math.ceil(batches / accumulate)
    return max(1, steps + math.ceil(0.02 * steps) + 1)


class RunState(pl.Callback):
    """Record in every checkpoint what a resume needs beyond Lightning's state: the run's identity (the
    settings that define what it computes, :func:`p3bench.resume.run_identity`), checked before a resume,
    and the training and validation metrics at that point, which a resume from the end of training (it
    trains no further step) reports as a whole run would."""

    def __init__(self, identity: dict[str, Any]) -> None:
        self.identity = identity

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        metrics = {}
        for key, value in trainer.callback_metrics.items():
            try:
                metrics[key] = float(value)
            except (TypeError, ValueError):
                continue
        checkpoint[CHECKPOINT_KEY] = {"identity": self.identity, "fit_metrics": metrics}
