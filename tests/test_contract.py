"""The SelectionDataModule contract carries what later methods need, proven with a test double through the
real Trainer: re-selection every epoch with the current model (P3), in-batch weights (IR-DRO), a target set
(DELIFT), checkpointed selection state (resume)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from p3bench.data.synthetic_math import load_synthetic_math
from p3bench.methods.base import Selection, SelectionContext, SelectionDataModule
from p3bench.models.collate import EncodedSubset, TrainCollator
from p3bench.models.factory import build_causal_lm
from p3bench.models.module import SelectionLM
from p3bench.models.tokenizer import train_local_tokenizer

from .conftest import SMALL_LLAMA as ARCH


class ProbeMethod(SelectionDataModule):
    """A test double: each round keeps the ``budget`` lowest-loss examples under the current model, weights
    them by rank, reads the target set, and (optionally) zeroes or softmaxes the in-batch coefficients."""

    name = "probe"

    def __init__(self, coefficient_mode: str = "default", every: int = 1, **kwargs):
        super().__init__(reselect_every_n_epochs=every, **kwargs)
        self.coefficient_mode = coefficient_mode
        self.reweight_calls = 0
        self.target_sizes: list[int] = []

    @torch.no_grad()
    def select(self, ctx: SelectionContext) -> Selection:
        assert ctx.module is not None, "dynamic selection must see the current model"
        ctx.module.eval()
        encoded = self.encoded("train")
        collate = TrainCollator(self.tokenizer.pad_token_id, self.max_length)
        losses, tokens = [], 0
        for start in range(0, len(encoded), 64):
            batch = collate(list(EncodedSubset(encoded, range(start, min(start + 64, len(encoded))))))
            batch = {k: v.to(ctx.module.device) for k, v in batch.items()}
            losses.extend(ctx.module.per_example_loss(batch).tolist())
            tokens += int(batch["attention_mask"].sum())
        order = sorted(range(len(losses)), key=lambda i: (losses[i], i))[: self.budget_size]
        self.target_sizes.append(len(self.target))
        return Selection(
            ids=[self.pool[i].id for i in order],
            scores=[losses[i] for i in order],
            weights=[1.0 + r / len(order) for r in range(len(order))],
            forward_tokens=tokens,
            diagnostics={"mean_loss": sum(losses) / len(losses)},
        )

    def reweight(self, losses: torch.Tensor, batch: dict) -> torch.Tensor:
        self.reweight_calls += 1
        assert not losses.requires_grad
        if self.coefficient_mode == "zero":
            return torch.zeros_like(losses)
        if self.coefficient_mode == "softmax":
            return torch.softmax(losses, dim=0)
        return super().reweight(losses, batch)

    def method_state(self) -> dict:
        return {"target_sizes": list(self.target_sizes)}

    def load_method_state(self, state: dict) -> None:
        self.target_sizes = list(state.get("target_sizes", []))


@pytest.fixture(scope="module")
def parts():
    splits = load_synthetic_math(n_train=240, n_val=20, n_test=20, seed=3)
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=300)
    return splits, tokenizer


def make(parts, seed: int = 0, lr: float = 3e-3, **method_kwargs):
    splits, tokenizer = parts
    pl.seed_everything(seed, verbose=False)
    model = build_causal_lm({"architecture": ARCH}, tokenizer, offline=True)
    optimizer = partial(torch.optim.AdamW, lr=lr, weight_decay=0.0)
    module = SelectionLM(model, tokenizer, optimizer, scheduler=None, evaluator=lambda text, ex: False)
    dm = ProbeMethod(
        splits=splits,
        tokenizer=tokenizer,
        budget=0.5,
        seed=seed,
        batch_size=16,
        max_length=96,
        **method_kwargs,
    )
    return module, dm


def trainer(tmp_path: Path | None, max_epochs: int) -> pl.Trainer:
    callbacks = []
    if tmp_path is not None:
        callbacks.append(
            pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=1, every_n_epochs=1)
        )
    return pl.Trainer(
        max_epochs=max_epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=tmp_path is not None,
        callbacks=callbacks,
        reload_dataloaders_every_n_epochs=1,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )


def test_dynamic_method_reselects_each_epoch_with_the_current_model(parts):
    module, dm = make(parts)
    trainer(None, max_epochs=3).fit(module, datamodule=dm)
    assert [r.round for r in dm.rounds] == [0, 1, 2]
    assert all(len(r.ids) == dm.budget_size for r in dm.rounds)
    # the model changed between rounds, and so did its view of which examples are easy
    assert dm.rounds[0].diagnostics["mean_loss"] > dm.rounds[2].diagnostics["mean_loss"]
    assert dm.rounds[0].ids != dm.rounds[1].ids
    assert all(r.forward_tokens > 0 for r in dm.rounds)
    assert dm.target_sizes == [len(parts[0].validation)] * 3
    assert dm.reweight_calls == 3 * -(-dm.budget_size // 16)


def test_in_batch_coefficients_drive_the_update(parts):
    module, dm = make(parts, coefficient_mode="zero")
    before = [p.detach().clone() for p in module.parameters()]
    trainer(None, max_epochs=1).fit(module, datamodule=dm)
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))

    module, dm = make(parts, coefficient_mode="softmax")
    before = [p.detach().clone() for p in module.parameters()]
    trainer(None, max_epochs=1).fit(module, datamodule=dm)
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_selection_weights_reach_the_loss(parts):
    module, dm = make(parts)
    trainer(None, max_epochs=1).fit(module, datamodule=dm)
    batch = next(iter(dm.train_dataloader()))
    assert sorted(set(batch["weight"].tolist())) != [1.0]
    coefficients = module.loss_coefficients(torch.ones(len(batch["weight"])), batch)
    assert torch.allclose(coefficients, batch["weight"] / len(batch["weight"]))


class CrashAtEpoch(pl.Callback):
    """Simulates a crash: raises at the start of ``epoch``, after the previous epoch's checkpoint."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


@pytest.mark.parametrize("every", [1, 0], ids=["dynamic", "static"])
def test_resume_after_a_crash_continues_exactly(parts, tmp_path: Path, every: int):
    """Crash at the start of epoch 2, resume from last.ckpt: the same rounds, the same data order, and so
    the same final model as a run that was never interrupted."""
    module, dm = make(parts, every=every)
    trainer(None, max_epochs=3).fit(module, datamodule=dm)
    expected_rounds = [r.ids for r in dm.rounds]
    expected_weights = [p.detach().clone() for p in module.parameters()]
    assert len(expected_rounds) == (3 if every else 1)

    module, dm = make(parts, every=every)
    crashing = trainer(tmp_path, max_epochs=3)
    crashing.callbacks.append(CrashAtEpoch(2))
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.fit(module, datamodule=dm)
    assert (tmp_path / "last.ckpt").is_file()

    module, resumed = make(parts, every=every)
    trainer(tmp_path, max_epochs=3).fit(module, datamodule=resumed, ckpt_path=str(tmp_path / "last.ckpt"))
    assert [r.ids for r in resumed.rounds] == expected_rounds
    assert resumed.target_sizes == [len(parts[0].validation)] * len(expected_rounds)
    assert all(torch.allclose(a, b) for a, b in zip(expected_weights, module.parameters(), strict=True))


def test_bad_selections_are_rejected(parts):
    _, dm = make(parts)
    for bad, fragment in [
        (Selection(ids=[]), "no examples"),
        (Selection(ids=[dm.pool[0].id, dm.pool[0].id]), "duplicate"),
        (Selection(ids=["nope"]), "not in the pool"),
        (Selection(ids=[ex.id for ex in dm.pool]), "over its budget"),
        (Selection(ids=[dm.pool[0].id], weights=[1.0, 2.0]), "weights"),
        (Selection(ids=[dm.pool[0].id], weights=[-1.0]), "negative"),
    ]:
        with pytest.raises(RuntimeError, match=fragment):
            dm._check(bad)
