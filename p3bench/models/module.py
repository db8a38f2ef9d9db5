"""The LightningModule every method trains: per-example target losses, weighted as the method says, and
greedy generation for answer checking on the test split."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from p3bench.models.losses import per_example_nll, target_token_counts


class SelectionLM(pl.LightningModule):
    """A causal LM trained on what a selection method gives it.

    Each training step computes one loss per example (mean NLL over its target tokens) and combines them
    with coefficients from the datamodule's ``reweight`` hook (by default the selection weights divided by
    the batch size, i.e. a weighted mean); the coefficients are computed from detached losses. Testing
    generates greedily from each prompt and checks the answer with ``evaluator``.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Mapping[str, Any] | None = None,
        evaluator: Callable[[str, Any], bool] | None = None,
        max_new_tokens: int = 64,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.optimizer_factory = optimizer
        self.scheduler_cfg = dict(scheduler) if scheduler else None
        self.evaluator = evaluator
        self.max_new_tokens = max_new_tokens
        self.train_tokens = 0
        self.train_target_tokens = 0
        self.train_examples = 0
        self.test_records: list[dict[str, Any]] = []

    # training ---------------------------------------------------------------------------------------------
    def per_example_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return per_example_nll(logits, batch["labels"])

    def loss_coefficients(self, losses: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "reweight"):
            return datamodule.reweight(losses.detach(), batch).detach()
        return batch["weight"] / batch["weight"].numel()

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses = self.per_example_loss(batch)
        coefficients = self.loss_coefficients(losses, batch).to(losses.dtype)
        loss = (coefficients * losses).sum()
        self.train_tokens += int(batch["attention_mask"].sum())
        self.train_target_tokens += int(target_token_counts(batch["labels"]).sum())
        self.train_examples += int(batch["input_ids"].size(0))
        size = batch["input_ids"].size(0)
        self.log("train/loss", losses.mean(), prog_bar=True, batch_size=size)
        self.log("train/weighted_loss", loss, batch_size=size)
        self.log("train/tokens", float(self.train_tokens), batch_size=size)
        return loss

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        losses = self.per_example_loss(batch)
        self.log("val/loss", losses.mean(), prog_bar=True, batch_size=losses.numel(), sync_dist=True)

    # testing: greedy generation and answer checking --------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[str]:
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        return self.tokenizer.batch_decode(output[:, input_ids.size(1) :], skip_special_tokens=True)

    def on_test_epoch_start(self) -> None:
        self.test_records = []

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        if self.evaluator is None:
            raise RuntimeError("testing needs an evaluator for the dataset's answers")
        texts = self.generate(batch["input_ids"], batch["attention_mask"])
        for text, example in zip(texts, batch["examples"], strict=True):
            self.test_records.append(
                {
                    "id": example.id,
                    "level": example.meta.get("level"),
                    "correct": bool(self.evaluator(text, example)),
                    "generated": text,
                    "answer": example.answer,
                }
            )

    def on_test_epoch_end(self) -> None:
        records = self.test_records
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[list[dict[str, Any]]] = [[] for _ in range(torch.distributed.get_world_size())]
            torch.distributed.all_gather_object(gathered, records)
            # the distributed sampler pads the last shard with repeats: keep each example once
            unique = {r["id"]: r for part in gathered for r in part}
            records = sorted(unique.values(), key=lambda r: r["id"])
            self.test_records = records
        for name, value in accuracy_by_level(records).items():
            self.log(f"test/{name}", value, rank_zero_only=True)

    # optimisation ------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if not self.scheduler_cfg:
            return optimizer
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError(
                "a learning-rate schedule needs a finite number of steps (set max_steps or max_epochs)"
            )
        warmup = int(math.ceil(float(self.scheduler_cfg.get("warmup_ratio", 0.0)) * total))
        scheduler = get_scheduler(
            self.scheduler_cfg.get("name", "linear"),
            optimizer,
            num_warmup_steps=warmup,
            num_training_steps=int(total),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # checkpointed counters -----------------------------------------------------------------------------------
    def local_counters(self) -> dict[str, int]:
        """Token and example counters of this process."""
        return {
            "train_tokens": self.train_tokens,
            "train_target_tokens": self.train_target_tokens,
            "train_examples": self.train_examples,
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["p3bench_counters"] = self.local_counters()

    def global_counters(self) -> dict[str, int]:
        """Token and example counters summed over all processes."""
        counters = self.local_counters()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            values = torch.tensor(list(counters.values()), dtype=torch.long, device=self.device)
            torch.distributed.all_reduce(values)
            counters = dict(zip(counters, values.tolist(), strict=True))
        return counters

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        counters = checkpoint.get("p3bench_counters", {})
        self.train_tokens = int(counters.get("train_tokens", 0))
        self.train_target_tokens = int(counters.get("train_target_tokens", 0))
        self.train_examples = int(counters.get("train_examples", 0))


def accuracy_by_level(records: list[dict[str, Any]]) -> dict[str, float]:
    """Overall accuracy, per-level accuracy (``accuracy_level_K``) and the count of checked examples."""
    if not records:
        return {}
    by_level: dict[Any, list[bool]] = defaultdict(list)
    for record in records:
        by_level[record.get("level")].append(record["correct"])
    metrics = {
        "accuracy": sum(r["correct"] for r in records) / len(records),
        "n_examples": float(len(records)),
    }
    for level in sorted(k for k in by_level if k is not None):
        metrics[f"accuracy_level_{level}"] = sum(by_level[level]) / len(by_level[level])
    return metrics
