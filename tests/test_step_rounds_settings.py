"""Step rounds under the trainer settings that change how steps, epochs and batches line up: the
iso-compute regime (its step estimate and learning-rate schedule across a resume), epochs cut short by
``trainer.limit_train_batches``, gradient accumulation; and the selection's backward tokens in the results of
a run. The crash-and-resume helpers are :mod:`tests.test_step_rounds`'s."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from p3bench.data.synthetic_math import load_synthetic_math
from p3bench.methods import METHODS
from p3bench.methods.simple import RandomEachRound
from p3bench.models.factory import build_causal_lm
from p3bench.models.module import SelectionLM
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.run import train_and_evaluate
from tests.conftest import SMALL_LLAMA, compose_config
from tests.test_step_rounds import PROBE_BACKWARD_TOKENS, BackwardProbe, crash_and_resume

STEP_ROUNDS = [
    "method=random_dynamic",
    "+method.reselect_every_n_steps=3",
    "method.reselect_every_n_epochs=0",
]


@pytest.mark.slow
def test_iso_compute_step_scheduled_run_resumed_keeps_the_uninterrupted_step_estimate(
    tmp_path: Path, cache_dir: Path
):
    """Under ``regime=iso_compute`` the step count (and so the learning-rate schedule) is estimated at setup:
    a resumed run, whose rounds are restored before setup, must use the uninterrupted run's estimate."""
    # one pass of the 400-example pool's tokens: 13 steps of 32 over budget-0.5 selections (7 batches an
    # epoch); a checkpoint every step, so the last is the final one; the one after step 8 is mid-epoch and
    # mid-round
    runs = crash_and_resume(
        tmp_path,
        cache_dir,
        STEP_ROUNDS,
        crash_at=9,
        every=1,
        steps=13,
        extra=("regime=iso_compute",),
        epochs=1,
    )
    assert (
        runs["whole"]["compute"]["reached_target_tokens"]
        and runs["resumed"]["compute"]["reached_target_tokens"]
    )
    estimates = [
        f["callbacks"]["TokenBudget"]["estimated_steps"] for f in (runs["checkpoint"], *runs["finals"])
    ]
    assert len(set(estimates)) == 1
    # the resumed run's schedule is the uninterrupted run's: the same learning rate at the end
    lrs = [f["lr_schedulers"][0]["_last_lr"] for f in runs["finals"]]
    assert lrs[0] == lrs[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra,epochs,every,crash_at,steps",
    [
        # 5 of the 7 batches an epoch, 2 epochs: the checkpoint after step 5 ends epoch 0
        (("trainer.limit_train_batches=5",), 2, 5, 7, 10),
        # the same epochs, as many tokens as one pass over the pool; the resumed run loads its loader's
        # state (no epoch count to estimate the schedule from), which must agree with the selection state
        (("trainer.limit_train_batches=5", "regime=iso_compute"), 1, 1, 6, 13),
    ],
    ids=["iso_epoch", "iso_compute"],
)
def test_step_scheduled_run_resumed_at_the_end_of_a_limited_epoch_trains_whole_epochs(
    tmp_path: Path,
    cache_dir: Path,
    extra: tuple[str, ...],
    epochs: int,
    every: int,
    crash_at: int,
    steps: int,
):
    """With ``trainer.limit_train_batches`` an epoch ends before the sampler's epoch does: a checkpoint at
    that end is at an epoch boundary, and the resumed run's next epoch is a whole one."""
    runs = crash_and_resume(
        tmp_path, cache_dir, STEP_ROUNDS, crash_at, every=every, steps=steps, extra=extra, epochs=epochs
    )
    assert runs["checkpoint"]["global_step"] == 5
    position = {"round": 1, "drawn_in_round": 2, "drawn_in_epoch": 0}
    assert runs["checkpoint"]["RandomEachRound"]["stream_position"] == position
    loader_states = runs["checkpoint"]["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_states == [{"position": position}]
    assert runs["resumed"]["compute"]["epochs_completed"] == runs["whole"]["compute"]["epochs_completed"]


class RecordMicroBatches(pl.Callback):
    """Records each trained micro-batch: (epoch, batch index in the epoch, global step, pool indices)."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int, int, list[int]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append((trainer.current_epoch, batch_idx, trainer.global_step, batch["index"].tolist()))


@pytest.mark.slow
def test_step_rounds_with_gradient_accumulation_start_at_the_first_micro_batch_of_their_step():
    splits = load_synthetic_math(n_train=240, n_val=20, n_test=20, seed=3)
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=300)
    pl.seed_everything(0, verbose=False)
    model = build_causal_lm({"architecture": SMALL_LLAMA}, tokenizer, offline=True)
    module = SelectionLM(model, tokenizer, partial(torch.optim.AdamW, lr=3e-3), evaluator=lambda t, e: False)
    every = 2
    dm = RandomEachRound(
        splits=splits,
        tokenizer=tokenizer,
        budget=0.3,  # 72 examples: 5 batches of 16 an epoch, 3 optimiser steps of 2 micro-batches (the last 1)
        seed=0,
        batch_size=16,
        max_length=96,
        reselect_every_n_steps=every,
        reselect_every_n_epochs=0,
    )
    recorder = RecordMicroBatches()
    trainer = pl.Trainer(
        max_epochs=3,
        accumulate_grad_batches=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[recorder],
        num_sanity_val_steps=0,
        limit_val_batches=0,
        accelerator="cpu",
    )
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 9
    assert [(r.round, r.global_step) for r in dm.rounds] == [(r, every * r) for r in range(5)]
    assert [(e, i) for e, i, _, _ in recorder.batches] == [(e, i) for e in range(3) for i in range(5)]
    for epoch, index, step, indices in recorder.batches:
        expected_step = 3 * epoch + index // 2  # micro-batches 2k and 2k+1 of an epoch make its step k
        assert step == expected_step
        selection = {dm.index_of[i] for i in dm.rounds[expected_step // every].ids}
        assert set(indices) <= selection, (epoch, index)


@pytest.mark.slow
def test_results_report_the_backward_tokens_a_run_s_selection_recorded(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(METHODS._entries, "backward_probe", BackwardProbe)
    PROBE_BACKWARD_TOKENS.clear()
    overrides = [
        "debug=smoke",
        "test=false",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "trainer.limit_val_batches=1",
        "method=random_dynamic",
        "method.name=backward_probe",
        "+method.reselect_every_n_steps=3",
        "method.reselect_every_n_epochs=0",
    ]
    results = train_and_evaluate(compose_config(overrides, tmp_path / "run", cache_dir))
    rounds = results["selection"]["rounds"]
    assert len(rounds) == len(PROBE_BACKWARD_TOKENS) == 3  # 7 steps, a round every 3
    assert results["compute"]["selection_backward_tokens"] == sum(PROBE_BACKWARD_TOKENS) > 0
    assert results["compute"]["selection_forward_tokens"] >= sum(PROBE_BACKWARD_TOKENS)


@pytest.mark.slow
def test_iso_compute_step_scheduled_run_reaches_its_token_target(tmp_path: Path, cache_dir: Path):
    """Step rounds train passes over budget-sized selections (200 of the 400 smoke examples: six batches of
    32 and one of 8), so a step carries fewer tokens than one of a pass over the pool; the step estimate
    must count those passes, or the run stops at its step limit short of the tokens every method gets."""
    from tests.test_step_rounds import run_overrides

    overrides = run_overrides(STEP_ROUNDS, "tokens", every=1000, extra=("regime=iso_compute",), epochs=5)
    results = train_and_evaluate(compose_config(overrides, tmp_path / "run", cache_dir))
    compute = results["compute"]
    assert compute["reached_target_tokens"], compute
    assert compute["train_tokens"] >= compute["target_train_tokens"]
