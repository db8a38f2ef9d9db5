"""Re-selection every U optimiser steps: round ``r`` starts at global step ``r*U`` with the live model (grad
enabled, the training optimiser at hand), its batches come from round ``r``'s selection, and a run that
crashes mid-epoch and resumes from ``last.ckpt`` selects, orders and trains exactly as one that never
stopped; so does a per-epoch method resumed mid-epoch."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger

from p3bench.compute import (
    RUN_MODEL,
    SELECTION_BACKWARD,
    SELECTION_FORWARD,
    SELECTION_ROLES,
    ModelSize,
    model_size,
    run_compute,
    selection_backward_tokens,
)
from p3bench.data.synthetic_math import load_synthetic_math
from p3bench.errors import ConfigError
from p3bench.methods import METHODS
from p3bench.methods.base import Selection, SelectionContext
from p3bench.methods.simple import RandomEachRound
from p3bench.models.collate import EncodedSubset, TrainCollator
from p3bench.models.factory import build_causal_lm
from p3bench.models.module import SelectionLM
from p3bench.models.sampler import LengthGroupedBatchSampler
from p3bench.models.step_sampler import ResumableDataLoader, StepScheduledBatchSampler, StreamPosition
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.preflight import prepare_run
from p3bench.run import train_and_evaluate
from p3bench.tracking import SelectionMetrics
from tests.conftest import SMALL_LLAMA, compose_config

#: batches each run records, by tag: (global_step at the draw, pool indices of the batch)
BATCHES: dict[str, list[tuple[int, list[int]]]] = {}


class CrashAt(pl.Callback):
    """Simulates a crash after optimiser step ``step`` (before that step's checkpoint is written: Lightning
    runs checkpoint callbacks last)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


class RecordBatches(pl.Callback):
    """Appends each trained batch's (global step, pool indices) to ``BATCHES[tag]``."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        BATCHES.setdefault(self.tag, []).append((trainer.global_step, batch["index"].tolist()))


class RecordingLogger(Logger):
    """A logger that keeps what it is given: (step, metrics) pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.logged.append((step, dict(metrics)))


# -- the samplers, without a Trainer ---------------------------------------------------------------------------


def previous_length_grouped_order(lengths, batch_size, generator, window_batches, rank=0, world_size=1):
    """The batch order of ``LengthGroupedBatchSampler`` before checkpoints could be taken mid-epoch: the
    order of uninterrupted runs must not change."""
    window = batch_size * window_batches
    order = torch.randperm(len(lengths), generator=generator).tolist()
    batches = []
    for start in range(0, len(order), window):
        part = sorted(order[start : start + window], key=lambda i: -lengths[i])
        batches.extend(part[k : k + batch_size] for k in range(0, len(part), batch_size))
    order_of_batches = torch.randperm(len(batches), generator=generator).tolist()
    usable = len(order_of_batches) - len(order_of_batches) % world_size
    return [batches[b] for b in order_of_batches[rank:usable:world_size]]


@pytest.mark.parametrize("rank,world_size", [(0, 1), (1, 2)])
def test_length_grouped_order_is_unchanged_and_an_epoch_resumes_from_its_start_state(rank, world_size):
    lengths = [(7 * i) % 23 + 1 for i in range(101)]
    sampler = LengthGroupedBatchSampler(lengths, 8, torch.Generator().manual_seed(5), 3, rank, world_size)
    reference = torch.Generator().manual_seed(5)
    epochs = []
    for _ in range(3):
        epochs.append((sampler.generator.get_state(), list(sampler)))
        assert epochs[-1][1] == previous_length_grouped_order(lengths, 8, reference, 3, rank, world_size)
    # an epoch cut after k batches: its start state and k skipped batches give the rest, and the next epoch
    start_state, epoch = epochs[1]
    assert torch.equal(sampler.epoch_start_state, epochs[2][0])
    resumed = LengthGroupedBatchSampler(
        lengths, 8, torch.Generator().set_state(start_state), 3, rank, world_size
    )
    resumed.skip_batches = 4
    assert list(resumed) == epoch[4:]
    assert list(resumed) == epochs[2][1]  # the skip applies once


def reference_stream(lengths_of, every, per_epoch, steps, seed=3):
    """Batches of a step-scheduled stream drawn one per optimiser step, from a fresh sampler."""
    step = {"now": 0}
    sampler = StepScheduledBatchSampler(lengths_of, lambda: step["now"], every, per_epoch, 4, 2, seed)
    out = []
    while len(out) < steps:
        for keys in sampler:
            out.append(keys)
            step["now"] += 1
            if len(out) == steps:
                break
    return out


def test_step_stream_switches_rounds_at_their_step_and_resumes_from_its_position():
    sizes = {r: 10 + r for r in range(20)}  # rounds of different sizes: 3 batches a pass, some 4

    def lengths_of(r):
        return [1 + (i * (r + 3)) % 11 for i in range(sizes[r])]

    every, per_epoch, total = 5, 3, 23
    stream = reference_stream(lengths_of, every, per_epoch, total)
    for step, keys in enumerate(stream):
        assert {r for r, _ in keys} == {step // every}
        assert all(0 <= i < sizes[step // every] for _, i in keys)
    # round 0 (10 examples, batches of 4: 3 a pass): steps 0-2 are one pass over its selection, steps 3-4
    # start the next pass, in another order
    assert sorted(i for keys in stream[:3] for _, i in keys) == list(range(10))
    assert stream[3:5] != stream[:2]
    # a pure function of (seed, round, pass): another seed, another order; the same seed, the same one
    assert reference_stream(lengths_of, every, per_epoch, total) == stream
    assert reference_stream(lengths_of, every, per_epoch, total, seed=4) != stream

    # stop after any number of batches, restore the position into a new sampler: the same stream
    for cut in (1, 4, 7, 12):
        step = {"now": 0}
        sampler = StepScheduledBatchSampler(lengths_of, partial(step.get, "now"), every, per_epoch, 4, 2, 3)
        drawn = []
        iterator = iter(sampler)
        while len(drawn) < cut:
            try:
                drawn.append(next(iterator))
            except StopIteration:
                iterator = iter(sampler)
                continue
            step["now"] += 1
        saved = StreamPosition.from_dict(sampler.position.to_dict())
        restored = StepScheduledBatchSampler(
            lengths_of, partial(step.get, "now"), every, per_epoch, 4, 2, 3, position=saved
        )
        while len(drawn) < total:
            for keys in restored:
                drawn.append(keys)
                step["now"] += 1
                if len(drawn) == total:
                    break
        assert drawn == stream, cut


# -- through the Trainer ---------------------------------------------------------------------------------------


#: the tokens each BackwardProbe round backpropagated, in the order the rounds ran
PROBE_BACKWARD_TOKENS: list[int] = []


class BackwardProbe(RandomEachRound):
    """``random_dynamic`` that also runs a backward pass through the live model in ``select``, reports its
    tokens to the round's compute ledger, and records what it saw: grad mode, the optimiser, the step."""

    name = "backward_probe"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[dict[str, Any]] = []

    def select(self, ctx: SelectionContext) -> Selection:
        module = ctx.module
        batch = TrainCollator(self.tokenizer.pad_token_id, self.max_length)(
            list(EncodedSubset(self.encoded("validation"), range(4)))
        )
        batch = {k: v.to(module.device) for k, v in batch.items()}
        loss = module.per_example_loss(batch).mean()
        loss.backward()
        grad_norm = sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)
        module.zero_grad(set_to_none=True)
        tokens = int(batch["attention_mask"].sum())
        self.compute_ledger.add(RUN_MODEL, SELECTION_FORWARD, model_size(module.model), tokens)
        self.compute_ledger.add(RUN_MODEL, SELECTION_BACKWARD, model_size(module.model), tokens)
        PROBE_BACKWARD_TOKENS.append(tokens)
        self.seen.append(
            {
                "grad_enabled": torch.is_grad_enabled(),
                "optimizer": ctx.optimizer,
                "step": ctx.global_step,
                "grad_norm": grad_norm,
            }
        )
        selection = super().select(ctx)
        selection.forward_tokens += tokens
        return selection


@pytest.fixture(scope="module")
def parts():
    splits = load_synthetic_math(n_train=240, n_val=20, n_test=20, seed=3)
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=300)
    return splits, tokenizer


@pytest.mark.slow
def test_rounds_start_at_their_step_with_the_live_model_and_batches_come_from_their_round(parts):
    splits, tokenizer = parts
    pl.seed_everything(0, verbose=False)
    model = build_causal_lm({"architecture": SMALL_LLAMA}, tokenizer, offline=True)
    module = SelectionLM(model, tokenizer, partial(torch.optim.AdamW, lr=3e-3), evaluator=lambda t, e: False)
    dm = BackwardProbe(
        splits=splits,
        tokenizer=tokenizer,
        budget=0.3,  # 72 examples: 5 batches of 16 an epoch
        seed=0,
        batch_size=16,
        max_length=96,
        reselect_every_n_steps=3,
        reselect_every_n_epochs=0,
    )
    assert dm.is_dynamic and dm.is_step_scheduled
    BATCHES.pop("probe", None)
    logger = RecordingLogger()
    trainer = pl.Trainer(
        max_epochs=3,
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[RecordBatches("probe"), SelectionMetrics()],
        num_sanity_val_steps=0,
        limit_val_batches=0,
        accelerator="cpu",
    )
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 15
    assert [(r.round, r.global_step) for r in dm.rounds] == [(r, 3 * r) for r in range(5)]
    assert [r.epoch for r in dm.rounds] == [0, 0, 1, 1, 2]  # rounds start mid-epoch
    for step, indices in BATCHES["probe"]:
        assert set(indices) <= {dm.index_of[i] for i in dm.rounds[step // 3].ids}, step
    assert [s for s, _ in BATCHES["probe"]] == list(range(15))
    # select ran with grad enabled, the training optimiser at hand, and could backpropagate
    assert [s["step"] for s in dm.seen] == [0, 3, 6, 9, 12]
    assert all(s["grad_enabled"] and s["optimizer"] is trainer.optimizers[0] for s in dm.seen)
    assert all(s["grad_norm"] > 0 for s in dm.seen)
    # each round's selection/* metrics are logged once, at the step it starts from
    round_steps = [
        step for step, metrics in logger.logged if any(k.startswith("selection/") for k in metrics)
    ]
    assert round_steps == [0, 3, 6, 9, 12]


def run_overrides(
    method: list[str],
    tag: str,
    crash_at: int | None = None,
    every: int = 2,
    extra: tuple[str, ...] = (),
    epochs: int = 2,
) -> list[str]:
    overrides = [
        "debug=smoke",  # 400 examples, budget 0.5, batch 32: 7 batches an epoch
        "test=false",
        *method,
        *extra,
        f"trainer.max_epochs={epochs}",
        "trainer.limit_val_batches=1",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "callbacks.model_checkpoint.every_n_epochs=null",
        f"+callbacks.model_checkpoint.every_n_train_steps={every}",
        "callbacks.model_checkpoint.save_top_k=-1",
        "+callbacks.record._target_=tests.test_step_rounds.RecordBatches",
        f"+callbacks.record.tag={tag}",
    ]
    if crash_at is not None:
        overrides += [
            "+callbacks.crash._target_=tests.test_step_rounds.CrashAt",
            f"+callbacks.crash.step={crash_at}",
        ]
    return overrides


def crash_and_resume(
    tmp_path: Path,
    cache_dir: Path,
    method: list[str],
    crash_at: int,
    every: int = 2,
    steps: int = 14,
    **overrides: Any,
) -> dict[str, Any]:
    """An uninterrupted run, and a run that crashes after step ``crash_at`` and resumes from last.ckpt, both
    checkpointing every ``every`` optimiser steps and training ``steps`` steps in all; ``overrides`` go to
    :func:`run_overrides` (``extra``, ``epochs``)."""
    for tag in ("whole", "crashed", "resumed"):
        BATCHES.pop(tag, None)
    whole = train_and_evaluate(
        compose_config(
            run_overrides(method, "whole", every=every, **overrides), tmp_path / "whole", cache_dir
        )
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_and_evaluate(
            compose_config(
                run_overrides(method, "crashed", crash_at, every, **overrides), tmp_path / "cut", cache_dir
            )
        )
    checkpoint = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=False)
    resumed = train_and_evaluate(
        compose_config(
            [*run_overrides(method, "resumed", every=every, **overrides), "ckpt_path=last"],
            tmp_path / "cut",
            cache_dir,
        )
    )
    saved_step = checkpoint["global_step"]
    assert 0 < saved_step < crash_at
    # the batches trained: those before the checkpoint, then the resumed run's, are the uninterrupted ones
    assert BATCHES["crashed"][:saved_step] + BATCHES["resumed"] == BATCHES["whole"]
    assert [r["ids_sha256"] for r in resumed["selection"]["rounds"]] == [
        r["ids_sha256"] for r in whole["selection"]["rounds"]
    ]
    assert resumed["compute"]["optimizer_steps"] == whole["compute"]["optimizer_steps"] == steps
    finals = [
        torch.load(d / "checkpoints" / "last.ckpt", weights_only=False)
        for d in (tmp_path / "whole", tmp_path / "cut")
    ]
    assert finals[0]["global_step"] == finals[1]["global_step"] == steps
    for key, value in finals[0]["state_dict"].items():
        assert torch.equal(value, finals[1]["state_dict"][key]), key
    states = [f[name] for f in finals for name in f if name in METHOD_STATE_KEYS]
    assert len(states) == 2
    assert _same_rounds(states[0]["rounds"], states[1]["rounds"])
    assert states[0]["method_state"] == states[1]["method_state"]
    return {"checkpoint": checkpoint, "whole": whole, "resumed": resumed, "finals": finals}


#: the datamodule entries of a checkpoint (saved under the class's qualified name)
METHOD_STATE_KEYS = {"RandomEachRound", "RandomSubset", "P3"}


def _same_rounds(a: list[dict], b: list[dict]) -> bool:
    """Rounds equal but for the wall time each took."""
    drop = {"seconds"}
    return [{k: v for k, v in r.items() if k not in drop} for r in a] == [
        {k: v for k, v in r.items() if k not in drop} for r in b
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "every,crash_at,position",
    [
        # the checkpoint after step 8 is mid-epoch (epoch 1, batch 1) and mid-round (round 2: steps 6-8):
        # round 2's batches were drawn at steps 6 and 7, the one at step 7 is epoch 1's first
        (2, 9, {"round": 2, "drawn_in_round": 2, "drawn_in_epoch": 1}),
        # the checkpoint after step 7 is on epoch 0's last batch, one batch into round 2: at an epoch boundary
        (7, 10, {"round": 2, "drawn_in_round": 1, "drawn_in_epoch": 0}),
    ],
    ids=["mid_epoch", "epoch_end"],
)
def test_step_scheduled_run_resumed_mid_round_equals_an_uninterrupted_run(
    tmp_path: Path, cache_dir: Path, every: int, crash_at: int, position: dict
):
    method = ["method=random_dynamic", "+method.reselect_every_n_steps=3", "method.reselect_every_n_epochs=0"]
    runs = crash_and_resume(tmp_path, cache_dir, method, crash_at, every)
    state = runs["checkpoint"]["RandomEachRound"]
    assert state["stream_position"] == position
    rounds = runs["resumed"]["selection"]["rounds"]
    assert [(r["round"], r["global_step"]) for r in rounds] == [(r, 3 * r) for r in range(5)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,entry,round_index",
    [(["method=random"], "RandomSubset", 0), (["method=random_dynamic"], "RandomEachRound", 1)],
    ids=["static", "per_epoch_rounds"],
)
def test_per_epoch_method_resumed_mid_epoch_keeps_its_data_order(
    tmp_path: Path, cache_dir: Path, method: list[str], entry: str, round_index: int
):
    runs = crash_and_resume(tmp_path, cache_dir, method, crash_at=11)
    # the checkpoint after step 10 is 3 batches into epoch 1: it records that epoch's round and start
    within = runs["checkpoint"][entry]["within_epoch"]
    assert (within["round"], within["batches_done"]) == (round_index, 3)


# -- preflight -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["+method.reselect_every_n_steps=-2"],
            r"^method.reselect_every_n_steps=-2 is invalid: expected an integer >= 0",
        ),
        (
            ["+method.reselect_every_n_steps=1.5"],
            r"^method.reselect_every_n_steps=1.5 is invalid: expected an integer >= 0",
        ),
        (
            ["+method.reselect_every_n_steps=4"],
            r"^method.reselect_every_n_steps=4 and method.reselect_every_n_epochs=1 are both set",
        ),
        (
            ["+method.reselect_every_n_steps=20", "method.reselect_every_n_epochs=0", "loader.num_workers=2"],
            r"^method.reselect_every_n_steps=20 needs loader.num_workers=0: .* \(got 2\)$",
        ),
        (
            ["+method.reselect_every_n_steps=20", "method.reselect_every_n_epochs=0", "evaluation.mode=icl"],
            r"^evaluation.mode=icl needs a static method: .* every 20 optimiser step",
        ),
    ],
)
def test_preflight_refuses_bad_step_schedules_in_one_line(tmp_path, cache_dir, overrides, message):
    cfg = compose_config(["debug=smoke", "method=random_dynamic", *overrides], tmp_path, cache_dir)
    with pytest.raises(ConfigError, match=message) as error:
        prepare_run(cfg)
    assert "\n" not in str(error.value)


def test_both_schedules_are_refused_by_the_datamodule(parts):
    splits, tokenizer = parts
    with pytest.raises(
        ConfigError, match="method.reselect_every_n_steps=2 and method.reselect_every_n_epochs=1"
    ):
        METHODS.get("random")(
            splits=splits, tokenizer=tokenizer, reselect_every_n_steps=2, reselect_every_n_epochs=1
        )


def test_selection_backward_tokens_are_counted_at_4n_and_reported():
    rounds = [
        SimpleNamespace(
            round=0,
            forward_tokens=30,
            compute=[
                {"name": RUN_MODEL, "role": SELECTION_FORWARD, "params": 100, "tokens": 30},
                {"name": RUN_MODEL, "role": SELECTION_BACKWARD, "params": 100, "tokens": 10},
            ],
        ),
        SimpleNamespace(round=1, forward_tokens=0, compute=[]),
    ]
    assert SELECTION_BACKWARD in SELECTION_ROLES
    assert selection_backward_tokens(rounds) == 10
    assert selection_backward_tokens([{"compute": rounds[0].compute}]) == 10
    summary = run_compute(rounds, ModelSize(100), train_tokens=50)
    assert summary["selection_flops"] == 2 * 100 * 30 + 4 * 100 * 10
    assert summary["train_flops"] == 6 * 100 * 50


def test_a_loader_state_that_disagrees_with_the_selection_state_is_refused():
    sampler = StepScheduledBatchSampler(lambda r: [3] * 8, lambda: 0, 2, 2, 4, 1, 0)
    loader = ResumableDataLoader(range(8), batch_sampler=sampler)
    state = loader.state_dict()
    assert state == {"position": {"round": -1, "drawn_in_round": 0, "drawn_in_epoch": 0}}
    loader.load_state_dict(state)
    with pytest.raises(RuntimeError, match="inconsistent"):
        loader.load_state_dict({"position": {"round": 3, "drawn_in_round": 1, "drawn_in_epoch": 1}})


@pytest.mark.slow
def test_p3_with_step_rounds_resumed_mid_round_equals_an_uninterrupted_run(tmp_path: Path, cache_dir: Path):
    """P3 (its pace advances per round, its DPP conditions on the previous round) on step rounds: the
    restored rounds, pace and data order continue as in a run that never stopped."""
    method = [
        "method=p3",
        "+method.reselect_every_n_steps=4",
        "method.reselect_every_n_epochs=0",
        "progress=false",
    ]
    runs = crash_and_resume(tmp_path, cache_dir, method, crash_at=9)
    rounds = runs["resumed"]["selection"]["rounds"]
    assert [(r["round"], r["global_step"]) for r in rounds] == [(r, 4 * r) for r in range(4)]
    assert runs["checkpoint"]["P3"]["stream_position"] == {
        "round": 1,
        "drawn_in_round": 4,
        "drawn_in_epoch": 1,
    }
