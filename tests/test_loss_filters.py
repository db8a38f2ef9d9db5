"""The offline loss-based baselines of arXiv 2402.14270 and 2206.07137: ``loss_band`` keeps a band of the
pool ranked by loss, ``rho_loss`` the largest reducible losses. Losses are checked against a one-example-at-
a-time reference, the selections against reference rankings, the trained reference models for caching and
determinism, and both methods run end to end through the CLI and the Trainer."""

from __future__ import annotations

import inspect
import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from p3bench.data.synthetic_math import load_synthetic_math
from p3bench.errors import ConfigError, ModelLoadError
from p3bench.methods import METHODS
from p3bench.methods.base import SelectionContext
from p3bench.methods.loss_filters import SCORING_DEFAULTS, example_losses
from p3bench.models import reference as reference_module
from p3bench.models.collate import EncodedSubset, TrainCollator
from p3bench.models.factory import build_causal_lm
from p3bench.models.losses import per_example_nll
from p3bench.models.module import SelectionLM
from p3bench.models.reference import ReferenceSettings, reference_model
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.models.weights_cache import weights_digest
from p3bench.run import train_and_evaluate
from tests.conftest import compose_config, read_results, run_cli
from tests.test_contract import ARCH

FAST = {"steps": 30, "batch_size": 16}


@pytest.fixture(scope="module")
def parts():
    splits = load_synthetic_math(n_train=240, n_val=40, n_test=20, seed=3)
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=300)
    return splits, tokenizer


def run_model(parts, seed: int = 0) -> SelectionLM:
    """The run's model with its initial weights, as a static method sees it in ``setup``."""
    splits, tokenizer = parts
    pl.seed_everything(seed, verbose=False)
    model = build_causal_lm({"architecture": ARCH}, tokenizer, offline=True)
    return SelectionLM(model, tokenizer, partial(torch.optim.AdamW, lr=3e-3), evaluator=lambda t, e: False)


def make(parts, method: str, budget: float = 0.25, cache: Path | None = None, max_length: int = 96, **kwargs):
    splits, tokenizer = parts
    return METHODS.get(method)(
        splits=splits,
        tokenizer=tokenizer,
        budget=budget,
        seed=0,
        max_length=max_length,
        cache_dir=cache,
        progress=False,
        **kwargs,
    )


def context(module: SelectionLM | None, cache: Path | None = None) -> SelectionContext:
    return SelectionContext(0, 0, 0, np.random.default_rng(0), module, cache)


@torch.no_grad()
def naive_losses(model: torch.nn.Module, dm, split: str = "train") -> np.ndarray:
    """Each example's training loss computed alone, one forward pass per example."""
    model.eval()
    encoded = dm.encoded(split)
    collate = TrainCollator(dm.tokenizer.pad_token_id, dm.max_length)
    losses = []
    for i in range(len(encoded)):
        batch = collate([EncodedSubset(encoded, [i])[0]])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        losses.append(float(per_example_nll(logits, batch["labels"])[0]))
    return np.array(losses)


def assert_band(chosen: np.ndarray, losses: np.ndarray, start: int, size: int, tol: float = 1e-5) -> None:
    """``chosen`` is ranks [start, start + size) of ``losses`` ranked highest first, up to ``tol`` between
    the batched and the one-at-a-time losses at the band's edges."""
    assert len(chosen) == size == len(set(chosen.tolist()))
    rest = np.setdiff1d(np.arange(losses.size), chosen)
    above = np.sort(losses[rest])[::-1][:start]
    below = np.sort(losses[rest])[::-1][start:]
    if above.size:
        assert losses[chosen].max() <= above.min() + tol
    if below.size:
        assert losses[chosen].min() >= below.max() - tol


# -- losses ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_length", [96, 24])
def test_per_example_losses_equal_a_one_example_at_a_time_reference(parts, max_length: int):
    module = run_model(parts)
    dm = make(parts, "loss_band", max_length=max_length, scorer={"source": "initial"})
    result = example_losses(module, dm.pool_items(), batch_size=7, max_batch_tokens=200)
    expected = naive_losses(module.model, dm)
    np.testing.assert_allclose(result.losses, expected, rtol=0, atol=1e-5)
    encoded = dm.encoded("train")
    assert result.forward_tokens == sum(encoded.num_tokens(i, max_length) for i in range(len(encoded)))
    cut = [len(p) >= max_length for p in encoded.prompt_ids]
    assert result.has_target.tolist() == [not c for c in cut]
    # the method's pool scores are those losses, and their tokens are the selection's forward tokens
    scores = dm.pool_scores(context(module))
    np.testing.assert_allclose(scores.values, expected, rtol=0, atol=1e-5)
    assert scores.forward_tokens == result.forward_tokens


def test_examples_with_no_target_left_rank_last(parts):
    module = run_model(parts)
    dm = make(parts, "loss_band", max_length=20, scorer={"source": "initial"}, skip=0.0, budget=1.0)
    scores = dm.pool_scores(context(module))
    n_cut = int((~scores.has_target).sum())
    assert n_cut > 0  # prompts of 20 tokens or more: nothing to train on, loss 0 as in training
    assert np.all(np.asarray(scores.values)[~scores.has_target] == 0.0)
    ranked = dm.ranking(np.asarray(scores.values), scores.has_target)
    assert not scores.has_target[ranked[-n_cut:]].any()
    assert dm.choose(scores, context(module))[1]["n_no_target"] == n_cut


# -- what each method keeps ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("skip", [0.0, 0.25])
def test_loss_band_keeps_exactly_the_ranks_after_the_skipped_top(parts, skip: float):
    module = run_model(parts)
    dm = make(parts, "loss_band", budget=0.25, skip=skip, scorer={"source": "initial"})
    n, k = len(dm.pool), dm.budget_size
    selection = dm.select(context(module))
    chosen = np.array([dm.index_of[i] for i in selection.ids])
    start = round(skip * n)
    losses = naive_losses(module.model, dm)
    assert_band(chosen, losses, start, k)
    # exactly the band of the method's own ranking, with its losses as scores
    values = np.asarray(dm.pool_scores(context(module)).values)
    order = np.lexsort((dm.tie_rank(), -values))
    assert set(chosen.tolist()) == set(order[start : start + k].tolist())
    np.testing.assert_allclose(selection.scores, losses[chosen], atol=1e-5)
    diagnostics = selection.diagnostics
    assert diagnostics["band_ranks"] == [start, start + k] and diagnostics["skip_count"] == start
    assert diagnostics["band_loss"]["max"] <= diagnostics["loss_quantiles"]["q100"]
    assert selection.forward_tokens > 0 and diagnostics["scorer"]["source"] == "initial"


def test_rho_loss_is_the_difference_of_two_loss_vectors_and_keeps_the_top_budget(parts, tmp_path: Path):
    module = run_model(parts)
    dm = make(parts, "rho_loss", budget=0.2, cache=tmp_path, scorer=FAST, reference=FAST)
    selection = dm.select(context(module, tmp_path))
    # the two models, rebuilt from the cache, scored one example at a time
    losses = {}
    for split in ("train", "validation"):
        settings = ReferenceSettings(split=split, steps=30, batch_size=16, seed=0)
        kwargs = {"examples": dm.examples(split), "encoded": dm.encoded(split), "max_length": 96}
        ref = reference_model(settings, module.model, dm.tokenizer, "cpu", cache_dir=tmp_path, **kwargs)
        assert ref.info["from_cache"]
        losses[split] = naive_losses(ref.model, dm)
    reducible = losses["train"] - losses["validation"]
    values = np.asarray(dm.pool_scores(context(module, tmp_path)).values)
    np.testing.assert_allclose(values, reducible, atol=2e-5)
    chosen = np.array([dm.index_of[i] for i in selection.ids])
    assert_band(chosen, reducible, 0, dm.budget_size, tol=2e-5)
    np.testing.assert_allclose(selection.scores, reducible[chosen], atol=2e-5)
    diagnostics = selection.diagnostics
    assert diagnostics["scorer"]["split"] == "train" and diagnostics["reference"]["split"] == "validation"
    assert diagnostics["selected_training_loss_mean"] == pytest.approx(
        losses["train"][chosen].mean(), abs=1e-4
    )
    assert selection.forward_tokens == 2 * sum(dm.token_lengths(range(len(dm.pool))))


# -- the trained reference models ---------------------------------------------------------------------------------


def test_the_trained_reference_is_cached_deterministic_and_leaves_the_run_alone(
    parts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    module = run_model(parts)
    dm = make(parts, "loss_band", cache=tmp_path)
    initial = weights_digest(module.model)
    settings = ReferenceSettings(split="train", steps=20, batch_size=16, seed=5)
    kwargs = {"examples": dm.examples("train"), "encoded": dm.encoded("train"), "max_length": 96}
    rng_state = torch.get_rng_state()
    first = reference_model(settings, module.model, dm.tokenizer, "cpu", cache_dir=tmp_path, **kwargs)
    assert not first.info["from_cache"] and first.info["train_loss_last"] < first.info["train_loss_first"]
    assert torch.equal(torch.get_rng_state(), rng_state)  # the run's random state is untouched
    assert weights_digest(module.model) == initial  # a copy was trained, not the run's model
    digest = weights_digest(first.model)
    assert digest != initial and digest == first.info["weights_sha256"]

    calls = []
    original = reference_module.train_reference
    monkeypatch.setattr(
        reference_module, "train_reference", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    again = reference_model(settings, module.model, dm.tokenizer, "cpu", cache_dir=tmp_path, **kwargs)
    assert again.info["from_cache"] and not calls and weights_digest(again.model) == digest
    # the same seed trains the same weights without the cache; another seed or split does not
    fresh = reference_model(settings, module.model, dm.tokenizer, "cpu", cache_dir=None, **kwargs)
    assert weights_digest(fresh.model) == digest and len(calls) == 1
    other = ReferenceSettings(split="train", steps=20, batch_size=16, seed=6)
    assert weights_digest(reference_model(other, module.model, dm.tokenizer, "cpu", **kwargs).model) != digest
    # a different initial model is a different cache entry
    changed = run_model(parts, seed=1)
    moved = reference_model(settings, changed.model, dm.tokenizer, "cpu", cache_dir=tmp_path, **kwargs)
    assert not moved.info["from_cache"] and moved.info["key"] != first.info["key"]


def test_a_pretrained_scorer_must_cover_the_run_tokenizer(parts, tmp_path: Path):
    module = run_model(parts)
    _, tokenizer = parts
    arch = {k: v for k, v in ARCH.items() if k != "model_type"}
    for vocab in (100, len(tokenizer)):
        LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **arch)).save_pretrained(tmp_path / f"v{vocab}")
    small = make(parts, "loss_band", scorer={"source": "pretrained", "name_or_path": str(tmp_path / "v100")})
    with pytest.raises(
        ConfigError, match=rf"vocabulary of 100 tokens, smaller than .*\({len(tokenizer)} tokens\)"
    ) as e:
        small.select(context(module))
    assert "\n" not in str(e.value)
    missing = make(
        parts, "loss_band", scorer={"source": "pretrained", "name_or_path": str(tmp_path / "none")}
    )
    with pytest.raises(ModelLoadError, match="method.scorer.name_or_path"):
        missing.select(context(module))
    same = make(
        parts,
        "loss_band",
        scorer={"source": "pretrained", "name_or_path": str(tmp_path / f"v{len(tokenizer)}")},
    )
    selection = same.select(context(module))
    assert (
        len(selection.ids) == same.budget_size and selection.diagnostics["scorer"]["source"] == "pretrained"
    )


# -- bad options ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "options", "match"),
    [
        (
            "loss_band",
            {"skip": 0.9},
            r"method.skip=0.9 drops 216 of the 240 pool examples, leaving 24 for a budget of 60",
        ),
        ("loss_band", {"skip": -0.1}, r"method.skip=-0.1 is invalid"),
        ("loss_band", {"skip": 1.0}, r"method.skip=1.0 is invalid"),
        ("loss_band", {"scorer": {"source": "final"}}, r"method.scorer.source='final' is not supported"),
        ("loss_band", {"scorer": {"split": "test"}}, r"method.scorer.split='test' is not supported"),
        ("loss_band", {"scorer": {"stepz": 3}}, r"method.scorer has unknown keys \['stepz'\]"),
        ("loss_band", {"scorer": {"steps": 0}}, r"method.scorer.steps=0 is invalid"),
        ("loss_band", {"scorer": {"lr": -1.0}}, r"method.scorer.lr=-1.0 is invalid"),
        ("loss_band", {"scorer": {"source": "pretrained"}}, r"needs method.scorer.name_or_path"),
        ("loss_band", {"scoring": {"batch_size": 0}}, r"method.scoring.batch_size=0 is invalid"),
        ("loss_band", {"text": "target"}, r"method.text is not an option of loss_band"),
        (
            "rho_loss",
            {"reference": {"split": "train"}},
            r"method.scorer and method.reference are the same model",
        ),
        ("rho_loss", {"reference": {"seed": -2}}, r"method.reference.seed=-2 is invalid"),
    ],
)
def test_bad_options_are_one_line_errors(parts, method: str, options: dict, match: str):
    with pytest.raises(ConfigError, match=match) as e:
        make(parts, method, **options)
    assert "\n" not in str(e.value)


def test_selecting_outside_a_trainer_is_a_clear_error(parts):
    dm = make(parts, "rho_loss")
    with pytest.raises(RuntimeError, match="run it through the Trainer") as e:
        dm.select(context(None))
    assert "\n" not in str(e.value)


# -- planted defects -------------------------------------------------------------------------------------------------


def test_skipping_the_top_of_the_ranking_drops_the_planted_junk(tmp_path: Path):
    # Measured on synthetic_math (1,000 examples, 10% label noise, 5% junk; budget 0.3; this model trained
    # 100-1,000 steps on the pool or on the validation split): the highest-loss tail is the planted junk
    # (all of it within the top 5%), while label noise is not enriched there (noisy fraction of the
    # selection 0.09-0.10 at skip=0 against 0.10-0.13 at skip=0.05-0.25), since a wrong final number is no
    # more surprising than a right one to a model that cannot do the arithmetic. So the claim tested here
    # is the junk one; skip > 0 does not select fewer noisy examples than skip = 0 on this data.
    splits = load_synthetic_math(n_train=400, n_val=40, n_test=20, seed=0)
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=300)
    module = run_model((splits, tokenizer))
    junk = np.array([ex.meta["is_junk"] for ex in splits.train])
    fractions = {}
    for skip in (0.0, 0.125):
        dm = make(
            (splits, tokenizer), "loss_band", budget=0.3, cache=tmp_path, skip=skip, scorer={"steps": 100}
        )
        chosen = [dm.index_of[i] for i in dm.select(context(module, tmp_path)).ids]
        fractions[skip] = junk[chosen].mean()
    assert fractions[0.0] >= 0.1 and fractions[0.125] == 0.0


# -- configs and end-to-end runs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["loss_band", "rho_loss"])
def test_each_config_equals_its_class_defaults(method: str, tmp_path: Path, cache_dir: Path):
    cfg = compose_config([f"method={method}"], tmp_path, cache_dir)
    configured = OmegaConf.to_container(cfg.method, resolve=True)
    cls = METHODS.get(method)
    expected: dict = {"name": method, **{key: dict(block) for key, block in cls.model_blocks.items()}}
    expected.update(scoring=dict(SCORING_DEFAULTS), progress=True)
    if method == "loss_band":
        expected["skip"] = inspect.signature(cls.__init__).parameters["skip"].default
    assert configured == expected
    assert next(iter(configured)) == "name"


SMOKE = ["debug=smoke", "test=false", "budget=0.25", "trainer.limit_val_batches=1", "method.progress=false"]


@pytest.mark.slow
def test_loss_band_runs_end_to_end_through_the_cli(tmp_path: Path, cache_dir: Path):
    args = [*SMOKE, "method=loss_band", "method.scorer.steps=20", "hydra.run.dir=run"]
    done = run_cli(args, tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    results = read_results(tmp_path / "run")
    selection = results["selection"]
    assert selection["n_selected"] == selection["budget_size"] == 100
    diagnostics = selection["rounds"][0]["diagnostics"]
    assert diagnostics["band_ranks"] == [50, 150] and diagnostics["scorer"]["steps"] == 20
    assert results["compute"]["selection_forward_tokens"] > 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "selection.jsonl").read_text().splitlines()]
    assert len(rows) == 100 and all(isinstance(r["score"], float) for r in rows)


@pytest.mark.slow
def test_rho_loss_runs_end_to_end_through_the_trainer(tmp_path: Path, cache_dir: Path):
    overrides = [
        *SMOKE,
        "method=rho_loss",
        "method.scorer.steps=20",
        "method.reference.steps=20",
        "logger=none",
    ]
    results = train_and_evaluate(compose_config(overrides, tmp_path, cache_dir))
    assert results["status"] == "ok"
    selection = results["selection"]
    assert selection["n_selected"] == selection["budget_size"] == 100
    diagnostics = selection["rounds"][0]["diagnostics"]
    assert diagnostics["reference"]["split"] == "validation" and diagnostics["reference"]["steps"] == 20
    assert results["compute"]["selection_forward_tokens"] > 0
