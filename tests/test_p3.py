"""P3 (arXiv 2408.05541) through the real Trainer: each round scores the pool with the current model, the
pace admits more of it, the DPP picks a diverse budget, and a resumed run makes the same next selection.
Plus the diversity claims on real MATH embeddings and on planted near-duplicates."""

from __future__ import annotations

from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from p3bench.algorithms.dpp import dpp_select
from p3bench.data import load_dataset_splits
from p3bench.data.synthetic_math import load_synthetic_math
from p3bench.embeddings import build_embedder
from p3bench.errors import ConfigError
from p3bench.methods import METHODS
from p3bench.methods.simple import RandomSubset
from p3bench.models.factory import build_causal_lm
from p3bench.models.module import SelectionLM
from p3bench.models.tokenizer import train_local_tokenizer
from tests.conftest import SHARED_DATA, compose_config, requires_shared_data
from tests.test_contract import ARCH, CrashAtEpoch, trainer

TFIDF = {"embedder": "tfidf", "embedder_kwargs": {"dim": 64}}


@pytest.fixture(scope="module")
def parts():
    splits = load_synthetic_math(n_train=240, n_val=20, n_test=20, seed=3)
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=300)
    return splits, tokenizer


def make(parts, method: str = "p3", seed: int = 0, budget: float = 0.2, **kwargs):
    splits, tokenizer = parts
    pl.seed_everything(seed, verbose=False)
    model = build_causal_lm({"architecture": ARCH}, tokenizer, offline=True)
    module = SelectionLM(model, tokenizer, partial(torch.optim.AdamW, lr=3e-3), evaluator=lambda t, e: False)
    kwargs.setdefault("dpp", TFIDF)
    dm = METHODS.get(method)(
        splits=splits,
        tokenizer=tokenizer,
        budget=budget,
        seed=seed,
        batch_size=16,
        eval_batch_size=64,
        max_length=96,
        progress=False,
        **kwargs,
    )
    return module, dm


def test_p3_rescores_with_the_current_model_paces_and_reselects_each_epoch(parts):
    module, dm = make(parts, budget=0.1)
    trainer(None, max_epochs=2).fit(module, datamodule=dm)
    first, second = dm.rounds
    assert len(first.ids) == len(second.ids) == dm.budget_size
    # the model changed, so did its scores and its selection
    assert second.diagnostics["mean_score"] > first.diagnostics["mean_score"]
    assert set(first.ids) != set(second.ids)
    assert first.scores != second.scores
    # the pace admits the easiest 20% in round 1 and 40% in round 2 (at least 1.5 x the budget of 24)
    assert first.diagnostics["admitted"] == 48 and second.diagnostics["admitted"] == 96
    # every selected example was admitted: its score is at least the round's threshold
    for record in dm.rounds:
        assert min(record.scores) >= 1.0 - record.diagnostics["pace_threshold"] - 1e-12
        assert record.forward_tokens > 0
    assert second.diagnostics["dpp_conditioned_on"] == dm.budget_size
    assert 0.0 <= second.diagnostics["jaccard_previous_round"] < 1.0


def test_resume_mid_run_makes_the_same_next_selection(parts, tmp_path: Path):
    module, dm = make(parts)
    trainer(None, max_epochs=3).fit(module, datamodule=dm)
    expected = [r.ids for r in dm.rounds]

    module, dm = make(parts)
    crashing = trainer(tmp_path, max_epochs=3)
    crashing.callbacks.append(CrashAtEpoch(2))
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.fit(module, datamodule=dm)
    # the checkpoint holds rounds 0 and 1: round 2 is selected again, by the restored model
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert len(checkpoint["P3"]["rounds"]) == 2

    module, resumed = make(parts)
    trainer(tmp_path, max_epochs=3).fit(module, datamodule=resumed, ckpt_path=str(tmp_path / "last.ckpt"))
    assert [r.ids for r in resumed.rounds] == expected


def test_static_difficulty_scores_once_and_keeps_the_initial_scores(parts, tmp_path: Path):
    module, dm = make(parts, difficulty={"dynamic": False})
    trainer(None, max_epochs=2).fit(module, datamodule=dm)
    first, second = dm.rounds
    assert first.forward_tokens > 0 and second.forward_tokens == 0
    assert len(dm.static_scores) == len(dm.pool)
    assert second.diagnostics["admitted"] > first.diagnostics["admitted"]


@pytest.mark.parametrize("method", ["hardest", "easiest", "curriculum", "p3_no_spl"])
def test_ablations_and_baselines_select_what_they_say(parts, method):
    overrides: dict = {}
    module, dm = make(parts, method=method, **overrides)
    trainer(None, max_epochs=1).fit(module, datamodule=dm)
    (record,) = dm.rounds
    scores = np.array(record.scores)
    if method in ("hardest", "easiest"):
        # round 0 was selected by the initial model: rebuild it (same seed) and score the whole pool
        initial, _ = make(parts, method=method)
        all_scores = np.sort(dm.scorer.score(initial, dm.pool_items()).scores)
        np.testing.assert_allclose(
            np.sort(scores),
            all_scores[: dm.budget_size] if method == "hardest" else all_scores[-dm.budget_size :],
        )
    if method == "curriculum":
        levels = Counter(dm.pool[dm.index_of[i]].meta["level"] for i in record.ids)
        lowest = min(ex.meta["level"] for ex in dm.pool)
        assert set(levels) == {lowest} or max(levels) <= lowest + 1
        assert record.forward_tokens == 0
    if method == "p3_no_spl":
        assert record.diagnostics["admitted"] == len(dm.pool)


def initial_scores(parts, method: str, **kwargs) -> np.ndarray:
    """The pool's scores under the initial model of a run with this seed (what round 0 selects with)."""
    initial, dm = make(parts, method=method, **kwargs)
    return np.asarray(dm.scorer.score(initial, dm.pool_items()).scores, dtype=float)


def test_p3_no_dpp_takes_a_seeded_random_budget_among_the_easiest_admitted(parts):
    module, dm = make(parts, method="p3_no_dpp", budget=0.1)
    trainer(None, max_epochs=1).fit(module, datamodule=dm)
    (record,) = dm.rounds
    n, k = len(dm.pool), dm.budget_size
    difficulty = 1.0 - np.clip(initial_scores(parts, "p3_no_dpp", budget=0.1), 0.0, 1.0)
    # the pace's round 0 admits the easiest 20% (48 of 240, above 1.5 x the budget of 24: no floor)
    admitted = int(np.ceil(0.2 * n))
    assert record.diagnostics["admitted"] == admitted and not record.diagnostics["pace_floor_applied"]
    assert record.diagnostics["pace_scheduled_fraction"] == pytest.approx(admitted / n)
    ties = dm._tie_order()
    ranked = ties[np.argsort(difficulty[ties], kind="stable")]
    candidates = np.sort(ranked[:admitted])
    # the budget is a uniform draw among them from the round's generator, not the easiest of them
    expected = np.sort(np.random.default_rng([0, 0]).choice(candidates, size=k, replace=False))
    assert record.ids == [dm.pool[i].id for i in expected]
    assert set(record.ids) != {dm.pool[i].id for i in ranked[:k]}


def test_spl_warms_up_then_admits_a_strict_subset_under_its_lambda(parts):
    module, dm = make(parts, method="spl", budget=0.1)
    trainer(None, max_epochs=3).fit(module, datamodule=dm)
    warmup, first, second = dm.rounds
    n = len(dm.pool)
    # round 0 trains on a random budget of the whole pool; lambda0 is not set from the untrained model
    assert warmup.diagnostics["pace_warmup"] and warmup.diagnostics["admitted"] == n
    assert "pace_lambda" not in warmup.diagnostics
    # round 1: lambda0 is the 20% quantile of the warmed-up model's losses, and only those are admitted
    assert first.diagnostics["pace_lambda"] == pytest.approx(dm.lambda0)
    assert first.diagnostics["admitted"] < n
    assert first.diagnostics["admitted"] == pytest.approx(0.2 * n, abs=1)
    assert max(-np.log(first.scores)) < dm.lambda0
    # round 2 grows lambda by pace.growth; the admitted set is those with a loss under it
    assert second.diagnostics["pace_lambda"] == pytest.approx(dm.lambda0 * 1.3)
    assert max(-np.log(second.scores)) < dm.lambda0 * 1.3
    assert not first.diagnostics["pace_floor_applied"]


def test_pace_conflict_pace_trains_on_fewer_than_the_budget(parts):
    # budget 0.3 (72) against a round-0 pace of 20% (48): the schedule wins, the round trains on all 48
    module, dm = make(parts, method="p3_no_dpp", budget=0.3, pace={"conflict": "pace"})
    trainer(None, max_epochs=1).fit(module, datamodule=dm)
    (record,) = dm.rounds
    assert record.diagnostics["admitted"] == len(record.ids) == 48 < dm.budget_size
    assert not record.diagnostics["pace_floor_applied"]
    # the default, conflict=budget: the budget wins, at least 1.5 x the budget is admitted
    module, dm = make(parts, method="p3_no_dpp", budget=0.3)
    trainer(None, max_epochs=1).fit(module, datamodule=dm)
    (record,) = dm.rounds
    assert record.diagnostics["admitted"] == 108 and len(record.ids) == dm.budget_size
    assert record.diagnostics["pace_floor_applied"]
    assert record.diagnostics["pace_scheduled_fraction"] == pytest.approx(48 / 240)


def test_pass_rate_difficulty_through_the_trainer_uses_the_run_evaluator(parts):
    splits, tokenizer = parts
    module, dm = make(parts, difficulty={"scorer": "pass_rate", "kwargs": {"k": 2, "max_new_tokens": 8}})
    checked = []

    def evaluator(text: str, example) -> bool:
        checked.append(example.id)
        return len(text) % 2 == 0

    module.evaluator = evaluator
    trainer(None, max_epochs=1).fit(module, datamodule=dm)
    (record,) = dm.rounds
    assert len(checked) == 2 * len(dm.pool)
    assert record.diagnostics["score_k"] == 2 and 0.0 <= record.diagnostics["score_mean_pass_rate"] <= 1.0
    assert set(record.scores) <= {0.0, 0.5, 1.0} and record.forward_tokens > 0


def test_bad_method_options_are_one_line_errors(parts):
    with pytest.raises(
        ConfigError, match="unknown difficulty scorer 'likelyhood'.*did you mean 'likelihood'"
    ):
        make(parts, difficulty={"scorer": "likelyhood"})
    with pytest.raises(ConfigError, match=r"method.pace has unknown keys \['speed'\]"):
        make(parts, pace={"speed": 2})
    with pytest.raises(ConfigError, match="method.dpp.condition_on='sometimes'"):
        make(parts, dpp={"condition_on": "sometimes"})
    with pytest.raises(ConfigError, match="policy needs the policy's features.*'level' has none"):
        module, dm = make(parts, difficulty={"scorer": "level"}, dpp={"embedder": "policy"})
        trainer(None, max_epochs=1).fit(module, datamodule=dm)


def test_method_configs_say_what_the_classes_do(parts, tmp_path: Path, cache_dir: Path):
    """Each P3-family config, composed as the CLI does, resolves to the same settings as its class alone."""
    for method in (
        "p3",
        "p3_no_dpp",
        "p3_no_spl",
        "p3_static",
        "spl",
        "dpp",
        "hardest",
        "easiest",
        "curriculum",
    ):
        cfg = compose_config([f"method={method}"], tmp_path, cache_dir)
        kwargs = OmegaConf.to_container(cfg.method, resolve=True)
        assert kwargs.pop("name") == method and kwargs.pop("progress") is True
        _, from_config = make(parts, method=method, **{"dpp": {}, **kwargs})
        _, from_class = make(parts, method=method, dpp={})
        for attribute in ("difficulty_cfg", "pace_cfg", "dpp_cfg", "order", "reselect_every_n_epochs"):
            assert getattr(from_config, attribute) == getattr(from_class, attribute), (method, attribute)
        assert type(from_config).name == method


def redundant_picks(pool, ids) -> int:
    """Selected examples beyond the first of each near-duplicate group."""
    groups = Counter(pool[i].meta["dup_group"] for i in ids if pool[i].meta["dup_group"] is not None)
    return sum(n - 1 for n in groups.values())


@pytest.mark.parametrize(("kernel", "budget"), [("cosine", 0.3), ("rbf", 0.5)])
def test_dpp_rarely_selects_planted_near_duplicates_together(kernel, budget):
    splits = load_synthetic_math(n_train=1000, n_val=10, n_test=10, seed=7, duplicate_rate=0.2)
    pool = splits.train
    features = build_embedder("tfidf", dim=512).embed([ex.prompt for ex in pool])
    k = int(budget * len(pool))  # cosine: k below the kernel's rank; rbf: full rank
    chosen = dpp_select(features, k, kernel=kernel, ridge=1e-3, bandwidth=0.3 if kernel == "rbf" else None)
    dpp_redundant = redundant_picks(pool, chosen.indices.tolist())
    rng = np.random.default_rng(0)
    random_redundant = [redundant_picks(pool, rng.choice(len(pool), k, replace=False)) for _ in range(20)]
    assert np.mean(random_redundant) >= 4 * max(dpp_redundant, 1), (dpp_redundant, random_redundant)


@requires_shared_data
@pytest.mark.shared_data
def test_dpp_sets_are_less_similar_than_random_sets_on_math_problems():
    splits = load_dataset_splits(
        "math", data_files=str(SHARED_DATA / "math" / "train.jsonl"), val_size=10, test_size=10, max_train=600
    )
    features = build_embedder("minilm", progress=False).embed([ex.prompt for ex in splits.train])

    def mean_pairwise(indices) -> float:
        f = features[np.asarray(indices)].astype(np.float64)
        total = f.sum(axis=0)
        return float((total @ total - len(f)) / (len(f) * (len(f) - 1)))

    k = 60
    dpp_similarity = mean_pairwise(dpp_select(features, k, kernel="cosine").indices)
    rng = np.random.default_rng(0)
    random_similarity = [mean_pairwise(rng.choice(len(features), k, replace=False)) for _ in range(50)]
    assert dpp_similarity < min(random_similarity), (dpp_similarity, min(random_similarity))


def test_random_baseline_is_still_registered():
    assert METHODS.get("random") is RandomSubset


@requires_shared_data
@pytest.mark.shared_data
def test_code_pass_rate_runs_each_sampled_program_against_the_tests_in_the_sandbox():
    """P3's pass_rate difficulty on APPS: k programs sampled per problem by the current model, each run on
    the problem's tests in the sandbox (through the apps evaluator's pooled checker)."""
    from p3bench.eval.answers import EVALUATORS
    from p3bench.execution import configure_execution

    splits = load_dataset_splits(
        "apps",
        data_files=str(SHARED_DATA / "apps" / "apps_mini_val_150.jsonl"),
        max_train=6,
        allow_code_execution=True,
        execution={"per_test_timeout_s": 2.0},
    )
    try:
        tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=400)
        pl.seed_everything(0, verbose=False)
        model = build_causal_lm(
            {"architecture": {**ARCH, "max_position_embeddings": 4096}}, tokenizer, offline=True
        )
        evaluate = EVALUATORS.get("apps")
        checked: list[int] = []

        def counting_batch(pairs):
            checked.append(len(pairs))
            return evaluate.batch(pairs)

        def evaluator(text, example):
            return evaluate(text, example)

        evaluator.batch = counting_batch
        module = SelectionLM(model, tokenizer, partial(torch.optim.AdamW, lr=1e-3), evaluator=evaluator)
        module.max_new_tokens = 12
        dm = METHODS.get("p3_no_dpp")(
            splits=splits,
            tokenizer=tokenizer,
            budget=3,
            max_length=512,
            eval_batch_size=3,
            progress=False,
            difficulty={"scorer": "pass_rate", "kwargs": {"k": 2, "batch_size": 3}},
        )
        trainer(None, max_epochs=1).fit(module, datamodule=dm)
    finally:
        configure_execution(False)
    (record,) = dm.rounds
    assert sum(checked) == 2 * len(splits.train)  # every sampled program was checked
    assert set(record.scores) <= {0.0, 0.5, 1.0} and record.forward_tokens > 0


def test_budget_is_met_when_the_dpp_cannot_tell_examples_apart(parts):
    """Pass rate 0 everywhere: every quality is at its floor, the DPP stops early, the rest is random."""
    module, dm = make(parts, difficulty={"scorer": "pass_rate", "kwargs": {"k": 1, "max_new_tokens": 4}})
    module.evaluator = lambda text, example: False
    trainer(None, max_epochs=1).fit(module, datamodule=dm)
    (record,) = dm.rounds
    assert len(record.ids) == dm.budget_size
    assert record.diagnostics["dpp_topped_up_at_random"] > 0


def test_config_mistakes_fail_at_construction(parts):
    with pytest.raises(ConfigError, match="pace.weights=log needs difficulties in"):
        make(parts, pace={"weights": "log", "mode": "lambda"})
    with pytest.raises(ConfigError, match="method.dpp.kernel='gaussian'"):
        make(parts, dpp={"kernel": "gaussian"})
    with pytest.raises(ConfigError, match="lambda0=0"):
        make(parts, pace={"lambda0": 0})


@requires_shared_data
@pytest.mark.shared_data
def test_an_apps_run_without_the_switch_refuses_before_training(tmp_path: Path, cache_dir: Path):
    from tests.conftest import run_cli

    done = run_cli(
        ["dataset=apps", "debug=fdr", "hydra.run.dir=run", "model.tokenizer.vocab_size=300"],
        tmp_path,
        cache_dir,
    )
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert "allow_code_execution=true" in last and "P3BENCH_ALLOW_CODE_EXECUTION=1" in last
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_policy_features_are_z_scored_per_dimension_before_the_kernel(parts):
    """The public code z-scores the policy's features per dimension over the pool before its kernel; a
    shared offset (every mean-pooled state of a small model shares one large component) must not make every
    pair look alike."""
    from p3bench.algorithms.diversity import standardized_columns
    from p3bench.scoring import ScoreResult

    _, dm = make(parts, dpp={"embedder": "policy"})
    rng = np.random.default_rng(0)
    raw = 50.0 + rng.normal(size=(30, 4)) * np.array([1.0, 5.0, 0.1, 0.0])  # an offset and a constant column
    features, tokens = dm._features(ScoreResult(scores=np.full(30, 0.5), features=raw))
    reference = np.zeros_like(raw)
    reference[:, :3] = (raw[:, :3] - raw[:, :3].mean(0)) / raw[:, :3].std(0)
    assert tokens == 0 and features.dtype == np.float32
    np.testing.assert_allclose(features, reference, atol=1e-5)
    np.testing.assert_allclose(standardized_columns(raw), reference, atol=1e-5)
    # raw, every pair is nearly parallel; z-scored, the mean pairwise cosine is near 0
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    assert (unit @ unit.T).mean() > 0.99
    z = features / np.linalg.norm(features, axis=1, keepdims=True)
    assert abs((z @ z.T)[~np.eye(30, dtype=bool)].mean()) < 0.1


def test_step_difficulty_gives_the_dpp_the_policy_features_of_its_own_pass(parts):
    """The steps scorer's teacher-forced pass pools the same hidden states as the likelihood scorer's, so
    P3 with step-level difficulty runs on the default embedder without a second pass."""
    from p3bench.scoring import build_scorer

    module, dm = make(parts, difficulty={"scorer": "steps"}, dpp={"embedder": "policy"}, budget=0.1)
    trainer(None, max_epochs=1).fit(module, datamodule=dm)
    (record,) = dm.rounds
    assert len(record.ids) == dm.budget_size and record.diagnostics["scorer"] == "steps"
    assert record.diagnostics["diversity_mean_cosine_pick"] < record.diagnostics["diversity_mean_cosine_topk"]
    steps = build_scorer("steps").score(module, dm.pool_items(), want_features=True)
    likelihood = build_scorer("likelihood").score(module, dm.pool_items(), want_features=True)
    assert steps.features.shape == (len(dm.pool), ARCH["hidden_size"])
    np.testing.assert_allclose(steps.features, likelihood.features, atol=1e-5)
