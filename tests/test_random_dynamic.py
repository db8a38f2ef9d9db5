"""``random_dynamic``, the control for re-selection: every round a fresh uniform random subset of exactly the
budget, drawn from (seed, round), so that rounds differ, the distinct examples over R rounds are what
re-drawing predicts (about N (1 - (1 - b)^R)), the same seed gives the same rounds, and a resumed run draws
what an uninterrupted one draws."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from scipy import stats

from p3bench.data.synthetic_math import load_synthetic_math
from p3bench.errors import ConfigError
from p3bench.methods import METHODS
from p3bench.methods.simple import RandomEachRound, RandomSubset
from p3bench.models.factory import build_causal_lm
from p3bench.models.module import SelectionLM
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.run import train_and_evaluate
from p3bench.utils.hashing import ids_sha256
from tests.conftest import compose_config
from tests.test_contract import ARCH, CrashAtEpoch, trainer

POOL = 240
BUDGET = 0.3  # 72 examples a round


@pytest.fixture(scope="module")
def parts():
    splits = load_synthetic_math(n_train=POOL, n_val=20, n_test=20, seed=3)
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=300)
    return splits, tokenizer


def make_datamodule(parts, seed: int = 0, budget: float = BUDGET, **kwargs) -> RandomEachRound:
    splits, tokenizer = parts
    return METHODS.get("random_dynamic")(
        splits=splits, tokenizer=tokenizer, budget=budget, seed=seed, batch_size=16, max_length=96, **kwargs
    )


def make(parts, seed: int = 0, **kwargs) -> tuple[SelectionLM, RandomEachRound]:
    splits, tokenizer = parts
    pl.seed_everything(seed, verbose=False)
    model = build_causal_lm({"architecture": ARCH}, tokenizer, offline=True)
    module = SelectionLM(model, tokenizer, partial(torch.optim.AdamW, lr=3e-3), evaluator=lambda t, e: False)
    return module, make_datamodule(parts, seed=seed, **kwargs)


def reference_round(pool_ids: list[str], seed: int, round_index: int, size: int) -> list[str]:
    """A uniform draw without replacement from the generator of (seed, round), in pool order."""
    chosen = np.random.default_rng([seed, round_index]).choice(len(pool_ids), size=size, replace=False)
    return [pool_ids[i] for i in sorted(chosen.tolist())]


def draw_rounds(dm: RandomEachRound, n_rounds: int) -> list[list[str]]:
    """The method's first ``n_rounds`` rounds, selected outside a Trainer (no model is needed)."""
    return [dm.run_selection(r).ids for r in range(n_rounds)]


@pytest.mark.slow
def test_each_round_is_a_fresh_uniform_subset_of_the_budget_through_the_trainer(parts):
    rounds = 6
    module, dm = make(parts)
    trainer(None, max_epochs=rounds).fit(module, datamodule=dm)
    pool_ids = [ex.id for ex in dm.pool]
    assert [r.round for r in dm.rounds] == list(range(rounds))
    assert dm.budget_size == 72
    for record in dm.rounds:
        assert len(record.ids) == len(set(record.ids)) == dm.budget_size
        assert record.ids == reference_round(pool_ids, 0, record.round, dm.budget_size)
        assert record.weights is None and record.forward_tokens == 0
    assert len({frozenset(r.ids) for r in dm.rounds}) == rounds  # every round differs
    # round 0 is what static `random` draws with the same seed
    assert dm.rounds[0].ids == RandomSubset.select(dm, dm.context(0)).ids
    # distinct examples over the rounds: N (1 - (1 - b)^R) = 211.8; the unseen count has sd ~ 5
    distinct = len(dm.selected_examples())
    assert abs(distinct - POOL * (1 - (1 - BUDGET) ** rounds)) < 20
    assert dm.rounds[-1].diagnostics["seen_fraction"] == distinct / POOL
    for previous, record in zip(dm.rounds, dm.rounds[1:], strict=False):
        a, b = set(previous.ids), set(record.ids)
        assert record.diagnostics["jaccard_previous_round"] == len(a & b) / len(a | b)


def test_distinct_examples_over_rounds_match_redrawing(parts):
    """Mean distinct count over 40 seeds against N (1 - (1 - b)^R), for several round counts."""
    budget, seeds, most_rounds = 0.2, 40, 8
    counts = np.zeros((seeds, most_rounds))
    for seed in range(seeds):
        seen: set[str] = set()
        for r, ids in enumerate(draw_rounds(make_datamodule(parts, seed=seed, budget=budget), most_rounds)):
            seen.update(ids)
            counts[seed, r] = len(seen)
    expected = POOL * (1 - (1 - budget) ** np.arange(1, most_rounds + 1))
    # the unseen count's sd is under sqrt(N q (1 - q)) <= 7.8 per seed, so under 1.3 for the mean of 40
    assert np.all(np.abs(counts.mean(axis=0) - expected) < 4.0)
    assert np.all(counts[:, 0] == round(budget * POOL))


def test_inclusion_is_uniform_over_the_pool(parts):
    """Over 300 rounds every example is drawn about 300 b times: a chi-square test of the counts (fixed
    seed, so the outcome is fixed) against equal frequencies, and no example is ever left out."""
    dm = make_datamodule(parts, seed=5)
    counts = np.zeros(POOL)
    for ids in draw_rounds(dm, 300):
        counts[[dm.index_of[i] for i in ids]] += 1
    assert counts.sum() == 300 * dm.budget_size and counts.min() > 0
    assert stats.chisquare(counts).pvalue > 1e-3
    # a skewed sampler over the same pool fails the same test (the test can fail)
    skewed = counts.copy()
    skewed[: POOL // 2] *= 1.3
    assert stats.chisquare(skewed).pvalue < 1e-6


def test_same_seed_same_rounds_another_seed_other_rounds(parts):
    first = draw_rounds(make_datamodule(parts, seed=1), 4)
    again = draw_rounds(make_datamodule(parts, seed=1), 4)
    other = draw_rounds(make_datamodule(parts, seed=2), 4)
    assert [ids_sha256(r) for r in first] == [ids_sha256(r) for r in again]
    assert all(ids_sha256(a) != ids_sha256(b) for a, b in zip(first, other, strict=True))


@pytest.mark.slow
def test_resume_from_a_mid_run_checkpoint_draws_the_same_rounds(parts, tmp_path: Path):
    module, uninterrupted = make(parts)
    trainer(None, max_epochs=4).fit(module, datamodule=uninterrupted)
    expected = [r.ids for r in uninterrupted.rounds]
    assert len(expected) == 4

    module, dm = make(parts)
    crashing = trainer(tmp_path, max_epochs=4)
    crashing.callbacks.append(CrashAtEpoch(2))
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.fit(module, datamodule=dm)
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert len(checkpoint["RandomEachRound"]["rounds"]) == 2  # rounds 2 and 3 are drawn after the restart

    module, resumed = make(parts)
    trainer(tmp_path, max_epochs=4).fit(module, datamodule=resumed, ckpt_path=str(tmp_path / "last.ckpt"))
    assert [r.ids for r in resumed.rounds] == expected
    # the diagnostics of the rounds drawn after the restart count the restored rounds too
    assert [r.diagnostics for r in resumed.rounds] == [r.diagnostics for r in uninterrupted.rounds]


@pytest.mark.slow
def test_runs_from_the_config_record_each_round_and_repeat_with_the_seed(tmp_path: Path, cache_dir: Path):
    """method=random_dynamic through the whole run: results.json's rounds are distinct subsets of exactly
    the budget, n_selected counts the distinct examples, and the same seed writes the same hashes."""
    overrides = [
        "debug=smoke",
        "test=false",
        "method=random_dynamic",
        "budget=0.25",
        "trainer.max_epochs=3",
        "trainer.limit_val_batches=1",
        "logger=none",
        "callbacks=none",
        "trainer.enable_progress_bar=false",
    ]
    runs = [
        train_and_evaluate(compose_config([*overrides, f"seed={seed}"], tmp_path / name, cache_dir))
        for name, seed in (("a", 0), ("b", 0), ("c", 1))
    ]
    selection = runs[0]["selection"]
    rounds = selection["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["n"] == selection["budget_size"] == 100 for r in rounds)
    assert len({r["ids_sha256"] for r in rounds}) == 3
    assert selection["budget_size"] < selection["n_selected"] <= 3 * selection["budget_size"]
    assert rounds[-1]["diagnostics"]["seen_fraction"] == selection["fraction"]
    hashes = [[r["ids_sha256"] for r in run["selection"]["rounds"]] for run in runs]
    assert hashes[0] == hashes[1] and hashes[0] != hashes[2]
    assert runs[0]["selection"]["ids_sha256"] == runs[1]["selection"]["ids_sha256"]


def test_reselection_period_is_configurable_and_checked(parts):
    assert make_datamodule(parts).reselect_every_n_epochs == 1
    assert make_datamodule(parts, reselect_every_n_epochs=3).reselect_every_n_epochs == 3
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigError, match="method.reselect_every_n_epochs") as error:
            make_datamodule(parts, reselect_every_n_epochs=bad)
        assert "\n" not in str(error.value) and "expected an integer >= 1" in str(error.value)
