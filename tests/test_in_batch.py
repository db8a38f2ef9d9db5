"""IR-DRO and MidRanking as methods (arXiv 2402.14270), through the real Trainer: the batches they weight
(random by default, length-grouped on request), the coefficients the model trains with, the parameter update
they give, micro-batch grouping, burn-in, global normalisation under DDP, weight metrics and their oracle
masses."""

from __future__ import annotations

import copy
import itertools
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from p3bench.algorithms.reweighting import irdro_weights, midranking_weights
from p3bench.data.synthetic_math import load_synthetic_math
from p3bench.errors import ConfigError
from p3bench.methods import METHODS
from p3bench.models.factory import build_causal_lm
from p3bench.models.module import SelectionLM
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.run import build_datamodule

from .conftest import SMALL_LLAMA as ARCH
from .conftest import compose_config, find_run_dirs, read_results, run_cli


@pytest.fixture(scope="module")
def parts():
    splits = load_synthetic_math(n_train=96, n_val=8, n_test=8, seed=5, noise_rate=0.25)
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=300)
    return splits, tokenizer


def make(parts, method: str, seed: int = 0, optimizer=None, batch_size: int = 16, **kwargs):
    splits, tokenizer = parts
    pl.seed_everything(seed, verbose=False)
    model = build_causal_lm({"architecture": ARCH}, tokenizer, offline=True)
    optimizer = optimizer or partial(torch.optim.SGD, lr=0.5)
    module = SelectionLM(model, tokenizer, optimizer, scheduler=None, evaluator=lambda t, e: False)
    dm = METHODS.get(method)(
        splits=splits, tokenizer=tokenizer, seed=seed, batch_size=batch_size, max_length=96, **kwargs
    )
    return module, dm


def fit(module, dm, max_steps: int, accumulate: int = 1, logger=False) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=max_steps,
        max_epochs=-1,
        logger=logger,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        accelerator="cpu",
        accumulate_grad_batches=accumulate,
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=dm)
    return trainer


class Recorder:
    """Wraps a datamodule's ``reweight`` and keeps each call's losses, indices and coefficients."""

    def __init__(self, dm) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._reweight = dm.reweight
        dm.reweight = self

    def __call__(self, losses, batch):
        coefficients = self._reweight(losses, batch)
        self.calls.append((losses.clone(), batch["index"].clone(), coefficients.clone()))
        return coefficients


def batch_losses(model, dm, indices: torch.Tensor) -> torch.Tensor:
    """Per-example losses of pool ``indices`` under ``model``, computed one example at a time."""
    from p3bench.models.collate import EncodedSubset, TrainCollator
    from p3bench.models.losses import per_example_nll

    collate = TrainCollator(dm.tokenizer.pad_token_id, dm.max_length)
    out = []
    for i in indices.tolist():
        batch = collate(list(EncodedSubset(dm.encoded("train"), [i])))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out.append(per_example_nll(logits, batch["labels"])[0])
    return torch.stack(out)


def sgd_step(model, losses_fn, lr: float) -> dict[str, torch.Tensor]:
    """Parameters after one plain SGD step on ``losses_fn(model)``."""
    model = copy.deepcopy(model)
    model.zero_grad()
    losses_fn(model).backward()
    with torch.no_grad():
        return {n: p - lr * p.grad for n, p in model.named_parameters() if p.grad is not None}


def assert_params_close(model, expected: dict[str, torch.Tensor], atol: float = 2e-6) -> None:
    params = dict(model.named_parameters())
    assert expected, "no parameter had a gradient"
    for name, value in expected.items():
        torch.testing.assert_close(params[name].detach(), value, atol=atol, rtol=1e-4, msg=name)


def test_irdro_trains_with_the_softmax_of_the_batch_losses(parts):
    module, dm = make(parts, "irdro", temperature=0.5)
    rec = Recorder(dm)
    fit(module, dm, max_steps=3)
    assert len(rec.calls) == 3
    for losses, _, coefficients in rec.calls:
        torch.testing.assert_close(coefficients, irdro_weights(losses, 0.5))
        assert coefficients.sum().item() == pytest.approx(1.0, abs=1e-6)
    summary = dm.reweighting_summary()
    assert summary["weighted_batches"] == 3 and summary["temperature"] == 0.5


def test_one_irdro_step_is_sgd_on_the_softmax_weighted_loss(parts):
    lr = 0.5
    module, dm = make(parts, "irdro", temperature=0.3)
    initial = copy.deepcopy(module.model)
    rec = Recorder(dm)
    fit(module, dm, max_steps=1)
    (_, index, _) = rec.calls[0]

    def weighted(model):
        losses = batch_losses(model, dm, index)
        return (irdro_weights(losses, 0.3) * losses).sum()

    expected = sgd_step(initial, weighted, lr)
    # the trainer clips nothing here (gradient_clip_val unset)
    assert_params_close(module.model, expected)


def test_irdro_with_a_huge_temperature_is_plain_erm(parts):
    full, dm_full = make(parts, "full", length_grouping=1)  # the same random batches as irdro's default
    fit(full, dm_full, max_steps=3)
    hot, dm_hot = make(parts, "irdro", temperature=1e9)
    fit(hot, dm_hot, max_steps=3)
    for (name, a), b in zip(full.model.named_parameters(), hot.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize(("fraction", "position"), [(0.25, 0), (0.25, 1), (0.125, 3), (1.0, 0)])
def test_midranking_trains_on_exactly_the_configured_band(parts, fraction: float, position: int):
    lr = 0.5
    module, dm = make(parts, "midranking", fraction=fraction, position=position)
    initial = copy.deepcopy(module.model)
    rec = Recorder(dm)
    fit(module, dm, max_steps=1)
    losses, index, coefficients = rec.calls[0]
    c = max(1, int(fraction * losses.numel()))
    ranked = torch.argsort(losses, descending=True, stable=True)
    band = ranked[position * c : (position + 1) * c]
    assert set(torch.nonzero(coefficients).flatten().tolist()) == set(band.tolist())
    torch.testing.assert_close(coefficients[band], torch.full((c,), 1.0 / c))

    def band_mean(model):
        return batch_losses(model, dm, index[band]).mean()

    assert_params_close(module.model, sgd_step(initial, band_mean, lr))


def test_midranking_clamps_a_band_that_does_not_fit_a_short_last_batch(parts):
    # 96 examples in batches of 19: the epoch ends with a batch of one, which has no second band
    module, dm = make(parts, "midranking", fraction=0.125, position=1, batch_size=19)
    rec = Recorder(dm)
    fit(module, dm, max_steps=6)
    sizes = sorted(losses.numel() for losses, _, _ in rec.calls)
    assert sizes == [1, 19, 19, 19, 19, 19]
    assert dm.clamped_batches == 1
    for losses, _, coefficients in rec.calls:
        expected = midranking_weights(losses, 0.125, 1 if losses.numel() > 1 else 0)
        torch.testing.assert_close(coefficients, expected)


def test_accumulated_micro_batches_share_one_softmax_and_one_step(parts):
    lr = 0.5
    module, dm = make(parts, "irdro", temperature=0.4, accumulate_micro_batches=True)
    initial = copy.deepcopy(module.model)
    rec = Recorder(dm)
    trainer = fit(module, dm, max_steps=1, accumulate=3)
    assert trainer.global_step == 1
    assert len(rec.calls) == 1  # one weighting for the three micro-batches
    losses, index, coefficients = rec.calls[0]
    assert losses.numel() == 48
    torch.testing.assert_close(coefficients, irdro_weights(losses, 0.4))

    def grouped(model):
        group = batch_losses(model, dm, index)
        return (irdro_weights(group, 0.4) * group).sum()

    assert_params_close(module.model, sgd_step(initial, grouped, lr))


def test_without_grouping_each_micro_batch_has_its_own_softmax(parts):
    module, dm = make(parts, "irdro", accumulate_micro_batches=False)
    rec = Recorder(dm)
    trainer = fit(module, dm, max_steps=2, accumulate=3)
    assert trainer.global_step == 2 and len(rec.calls) == 6
    assert all(c.sum().item() == pytest.approx(1.0, abs=1e-6) for _, _, c in rec.calls)


def test_the_last_partial_group_of_an_epoch_is_weighted_and_stepped(parts):
    # 96 examples in batches of 16 = 6 micro-batches an epoch; groups of 4 -> a full group and one of 2
    module, dm = make(parts, "midranking", fraction=0.25, position=1, accumulate_micro_batches=True)
    rec = Recorder(dm)
    trainer = fit(module, dm, max_steps=2, accumulate=4)
    assert trainer.global_step == 2
    assert [losses.numel() for losses, _, _ in rec.calls] == [64, 32]


def test_grouping_without_accumulation_is_a_one_line_error(parts):
    module, dm = make(parts, "irdro", accumulate_micro_batches=True)
    with pytest.raises(ConfigError, match="accumulate_grad_batches >= 2"):
        fit(module, dm, max_steps=1)


def test_burn_in_steps_are_plain_erm(parts):
    module, dm = make(parts, "irdro", temperature=0.05, burn_in_steps=2)
    rec = Recorder(dm)
    fit(module, dm, max_steps=4)
    for step, (losses, _, coefficients) in enumerate(rec.calls):
        uniform = torch.full_like(coefficients, 1.0 / losses.numel())
        if step < 2:
            torch.testing.assert_close(coefficients, uniform)
        else:
            torch.testing.assert_close(coefficients, irdro_weights(losses, 0.05))
            assert not torch.allclose(coefficients, uniform)


def test_weight_metrics_are_logged_with_the_mass_on_planted_noise(parts, tmp_path: Path):
    splits, _ = parts
    noisy = {i for i, ex in enumerate(splits.train) if ex.meta["is_noisy"]}
    assert noisy
    module, dm = make(parts, "irdro", temperature=0.2)
    rec = Recorder(dm)
    logger = pl.loggers.CSVLogger(tmp_path)
    fit(module, dm, max_steps=3, logger=logger)
    losses, index, coefficients = rec.calls[-1]
    flags = torch.tensor([i in noisy for i in index.tolist()])
    metrics = dm.weight_metrics()
    assert metrics["mass_noisy"] == pytest.approx(float(coefficients[flags].sum()), abs=1e-6)
    assert metrics["share_noisy"] == pytest.approx(float(flags.float().mean()))
    assert metrics["effective_sample_size"] == pytest.approx(float(1 / (coefficients**2).sum()), rel=1e-5)
    header = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    for name in ("entropy", "max_weight", "effective_sample_size", "mass_noisy", "share_noisy"):
        assert f"weights/{name}" in header
    summary = dm.reweighting_summary()
    assert summary["weighted_batches"] == 3
    assert 0 <= summary["mean_mass_noisy"] <= 1


def test_bad_options_are_one_line_errors(parts):
    splits, tokenizer = parts
    base = {"splits": splits, "tokenizer": tokenizer}
    cases = [
        ("irdro", {"temperature": 0}, "temperature=0"),
        ("irdro", {"normalise": "world"}, "method.normalise='world'"),
        ("irdro", {"burn_in_steps": -1}, "method.burn_in_steps=-1"),
        ("irdro", {"accumulate_micro_batches": "yes"}, "method.accumulate_micro_batches='yes'"),
        ("midranking", {"fraction": 1.5}, "fraction=1.5"),
        ("midranking", {"position": -1}, "position=-1"),
        ("midranking", {"fraction": 1.0, "position": 1}, "method.position=1"),
        ("irdro", {"length_grouping": 0}, "method.length_grouping=0"),
        ("midranking", {"length_grouping": 2.5}, "method.length_grouping=2.5"),
    ]
    for method, options, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            METHODS.get(method)(**base, **options)
        assert "\n" not in str(info.value)


# which batches the weights compare ----------------------------------------------------------------------------


def sorted_by_length_slices(batches: list[list[int]], lengths: list[int]) -> bool:
    """Whether ``batches`` are consecutive slices of the examples sorted by length: ordered by their longest
    example, no batch holds an example shorter than one of the next batch's."""
    spans = sorted(([lengths[i] for i in b] for b in batches), key=max, reverse=True)
    return all(min(a) >= max(b) for a, b in itertools.pairwise(spans))


@pytest.mark.parametrize("method", ["irdro", "midranking"])
def test_batches_are_random_by_default_and_length_grouped_on_request(parts, method: str):
    # 96 examples in batches of 8: a window of 50 batches holds the whole pool, so grouped batches are slices
    # of it sorted by length; random batches mix lengths
    drawn = {}
    for grouping in (None, 50):
        options = {} if grouping is None else {"length_grouping": grouping}
        _, dm = make(parts, method, batch_size=8, **options)
        assert dm.reweighting_summary()["length_grouping"] == (grouping or 1)
        lengths = dm.token_lengths(range(len(dm.pool)))
        batches = [b["index"].tolist() for b in dm.train_dataloader()]
        assert sorted(i for b in batches for i in b) == list(range(len(dm.pool)))
        drawn[grouping] = sorted_by_length_slices(batches, lengths)
    assert drawn == {None: False, 50: True}


def test_the_method_config_sets_the_grouping_and_null_follows_the_loader(tmp_path: Path, cache_dir: Path):
    splits = load_synthetic_math(n_train=64, n_val=4, n_test=4, seed=2)
    cases = [
        (["method=irdro"], 1),
        (["method=midranking"], 1),
        (["method=irdro", "method.length_grouping=50"], 50),
        (["method=midranking", "method.length_grouping=null", "loader.length_grouping=7"], 7),
        (["method=full"], 50),  # other methods follow the loader
    ]
    for overrides, expected in cases:
        dm = build_datamodule(compose_config(overrides, tmp_path, cache_dir), splits)
        assert dm.length_grouping == expected, overrides


@pytest.mark.parametrize(
    ("method", "options", "reference"),
    [
        ("irdro", {"temperature": 0.3}, lambda losses: irdro_weights(losses, 0.3)),
        ("irdro", {"temperature": 0.3, "length_grouping": 50}, lambda losses: irdro_weights(losses, 0.3)),
        ("midranking", {"fraction": 0.25}, lambda losses: midranking_weights(losses, 0.25, 1)),
        (
            "midranking",
            {"fraction": 0.25, "length_grouping": 50},
            lambda losses: midranking_weights(losses, 0.25, 1),
        ),
    ],
)
def test_training_weights_are_the_closed_form_on_the_batches_drawn(parts, method, options, reference):
    """Through the Trainer (learning rate 0, so the model stays the initial one): every step weights a batch
    drawn as configured, the losses weighted are those of that batch's examples, and the coefficients are
    the closed form of those losses."""
    module, dm = make(parts, method, optimizer=partial(torch.optim.SGD, lr=0.0), batch_size=8, **options)
    initial = copy.deepcopy(module.model)
    rec = Recorder(dm)
    fit(module, dm, max_steps=12)  # one epoch
    lengths = dm.token_lengths(range(len(dm.pool)))
    batches = [index.tolist() for _, index, _ in rec.calls]
    assert sorted(i for b in batches for i in b) == list(range(len(dm.pool)))
    assert sorted_by_length_slices(batches, lengths) == (options.get("length_grouping", 1) == 50)
    with torch.no_grad():
        for losses, index, coefficients in rec.calls:
            torch.testing.assert_close(losses, batch_losses(initial, dm, index), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(coefficients, reference(losses))


# global normalisation under DDP ------------------------------------------------------------------------------


def _ddp_worker(rank: int, world: int, rendezvous: str, method: str, options: dict, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        splits = load_synthetic_math(n_train=40, n_val=4, n_test=4, seed=1)
        tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=260)
        dm = METHODS.get(method)(splits=splits, tokenizer=tokenizer, normalise="global", **options)
        generator = torch.Generator().manual_seed(7)
        every = torch.rand(11, generator=generator) * 5
        sizes = [6, 5]
        start = sum(sizes[:rank])
        local = every[start : start + sizes[rank]]
        index = torch.arange(start, start + sizes[rank])
        coefficients = dm.reweight(local, {"index": index, "weight": torch.ones(sizes[rank])})
        torch.save({"coefficients": coefficients, "metrics": dm.weight_metrics()}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    ("method", "options", "reference"),
    [
        ("irdro", {"temperature": 0.7}, lambda losses: irdro_weights(losses, 0.7)),
        ("midranking", {"fraction": 0.2, "position": 1}, lambda losses: midranking_weights(losses, 0.2, 1)),
    ],
)
def test_global_normalisation_on_two_processes_equals_one_process_on_the_whole_batch(
    tmp_path: Path, method: str, options: dict, reference
):
    out = str(tmp_path / "weights")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "rendezvous"), method, options, out), nprocs=2, join=True)
    parts_ = [torch.load(f"{out}.{rank}") for rank in range(2)]
    every = torch.rand(11, generator=torch.Generator().manual_seed(7)) * 5
    expected = reference(every)
    # each process's coefficients are its slice times the world size (the processes' gradients are averaged)
    got = torch.cat([p["coefficients"] for p in parts_]) / 2
    torch.testing.assert_close(got, expected)
    assert parts_[0]["metrics"] == parts_[1]["metrics"]  # both saw the global weights
    assert parts_[0]["metrics"]["max_weight"] == pytest.approx(float(expected.max()))


def test_ddp_run_with_global_normalisation_and_grouped_micro_batches(tmp_path: Path, cache_dir: Path):
    """Two CPU processes (gloo) through the CLI: IR-DRO normalised over both processes' two micro-batches."""
    result = run_cli(
        [
            "method=irdro",
            "method.normalise=global",
            "method.accumulate_micro_batches=true",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.accumulate_grad_batches=2",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=4",
            "trainer.limit_val_batches=1",
            "trainer.enable_progress_bar=false",
            "dataset.params.n_train=160",
            "dataset.params.n_val=16",
            "dataset.params.n_test=16",
            "test=false",
            "logger=csv",
            "hydra.run.dir=run",
        ],
        tmp_path,
        cache_dir,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = read_results(find_run_dirs(tmp_path)[0])
    assert results["compute"]["world_size"] == 2
    assert results["compute"]["optimizer_steps"] == 2
    summary = results["selection"]["reweighting"]
    assert summary["normalise"] == "global" and summary["accumulate_micro_batches"] is True
    assert summary["length_grouping"] == 1  # the method's own default: random batches
    assert summary["weighted_batches"] == 2


# planted noise -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def noisy_parts():
    splits = load_synthetic_math(
        n_train=480, n_val=8, n_test=8, seed=11, noise_rate=0.2, junk_rate=0.05, duplicate_rate=0.0
    )
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=300)
    planted = {i for i, ex in enumerate(splits.train) if ex.meta["is_noisy"] or ex.meta["is_junk"]}
    return (splits, tokenizer), planted


def planted_mass(rec: Recorder, planted: set[int], skip: int) -> float:
    """Mean over batches (after the first ``skip``) of the weight on planted noisy or junk examples."""
    masses = [
        float(sum(c for c, i in zip(coeff.tolist(), index.tolist(), strict=True) if i in planted))
        for _, index, coeff in rec.calls[skip:]
    ]
    return sum(masses) / len(masses)


def test_midranking_weights_planted_noise_less_than_hardest_first(noisy_parts):
    """Two epochs on synthetic_math with 20% label noise and 5% junk: over the second epoch, MidRanking's
    weight mass on the planted examples is below the hardest band's (position 0) and below their share of
    the budget chosen by hardest-first selection (``hardest``, re-ranked with the current model)."""
    parts_, planted = noisy_parts
    adamw = partial(torch.optim.AdamW, lr=3e-3)
    epoch = 480 // 16
    masses = {}
    for position in (0, 1):
        module, dm = make(parts_, "midranking", optimizer=adamw, fraction=0.125, position=position)
        rec = Recorder(dm)
        fit(module, dm, max_steps=2 * epoch)
        masses[position] = planted_mass(rec, planted, skip=epoch)
    module, dm = make(parts_, "hardest", optimizer=adamw, budget=0.125, progress=False)
    trainer = pl.Trainer(
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        reload_dataloaders_every_n_epochs=1,
        accelerator="cpu",
    )
    trainer.fit(module, datamodule=dm)
    chosen = [dm.index_of[i] for i in dm.rounds[1].ids]
    hardest_share = sum(i in planted for i in chosen) / len(chosen)
    share = len(planted) / 480
    assert masses[1] < masses[0], masses
    assert masses[1] < hardest_share, (masses, hardest_share)
    assert masses[0] > share and hardest_share > share  # the hardest examples are mostly the planted ones
