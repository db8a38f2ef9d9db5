"""The 19 samplers of Sachdeva et al. (arXiv 2402.09668) as p3bench methods: every config runs end to end
through the real Trainer on a small text pool, each sampler selects what its paper says from its scores, and
the local stand-ins learn what they stand in for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy.stats import spearmanr

from p3bench.cli import CONFIG_DIR
from p3bench.data import load_dataset_splits
from p3bench.errors import ConfigError
from p3bench.methods import METHODS
from p3bench.methods.base import SelectionContext
from p3bench.methods.pool_scoring import PoolScores
from p3bench.methods.quality_filters import CHECKPOINTS, SIZES
from p3bench.models import standins
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.run import train_and_evaluate
from p3bench.scoring.ask_llm import ASK_LLM_TEMPLATE, AskLLMScorer
from p3bench.scoring.perplexity import PerplexityScorer
from p3bench.utils.hashing import id_hash_order
from tests.conftest import SHARED_DATA, compose_config, requires_shared_data

SAMPLERS = [
    "random",
    "density",
    "semdedup",
    "prototypes",
    *[f"askllm_{s}" for s in SIZES],
    *[f"perplexity_{s}" for s in SIZES],
    *[f"perplexity_{s}" for s in CHECKPOINTS],
]
# a small pool, cheap embeddings and stand-ins trained for a few steps: this checks the wiring, not quality
SMALL = [
    "experiment=sachdeva19_run",
    "dataset.params.max_train=120",
    "++dataset.params.components.pile.params.val_size=20",
    "++dataset.params.components.pile.params.test_size=20",
    "++dataset.params.components.c4.params.val_size=10",
    "++dataset.params.components.c4.params.test_size=10",
    "++dataset.params.components.books.params.val_size=10",
    "++dataset.params.components.books.params.test_size=10",
    "dataset.max_length=64",
    "coverage_embedder.name=tfidf",
    "+coverage_embedder.kwargs.dim=32",
    "trainer.max_epochs=1",
    "logger=none",
    "callbacks=none",
]


def standin_overrides(sampler: str) -> list[str]:
    if sampler.startswith("askllm_"):
        return [
            "method.standin.steps=8",
            "method.standin.reference.0.params.max_files=2",
            "method.standin.reference.0.params.max_docs_per_file=10",
            "method.standin.reference.1.max_docs=20",
            "method.standin.reference.2.max_docs=20",
            "method.standin.reference.3.max_docs=10",
        ]
    if sampler.startswith("perplexity_"):
        return ["method.standin.steps=10"]
    return []


def test_the_comparison_has_19_samplers_each_with_a_config_and_a_class():
    sweep = OmegaConf.load(CONFIG_DIR / "experiment" / "sachdeva19.yaml")
    assert sweep.hydra.sweeper.params.method.split(",") == SAMPLERS
    assert len(SAMPLERS) == 19
    for name in SAMPLERS:
        assert METHODS.get(name).name == name


@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if s.startswith(("askllm_", "perplexity_"))])
def test_each_scorer_config_names_the_same_scorer_as_its_class(sampler: str, tmp_path: Path, cache_dir: Path):
    cfg = compose_config([f"method={sampler}"], tmp_path, cache_dir)
    method = OmegaConf.to_container(cfg.method, resolve=True)
    preset = METHODS.get(sampler).preset
    for key in preset:
        for field, value in preset[key].items():
            assert method[key][field] == value, (sampler, key, field)


@requires_shared_data
@pytest.mark.slow
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_each_sampler_runs_end_to_end_through_the_trainer(sampler: str, tmp_path: Path, cache_dir: Path):
    cfg = compose_config(
        [*SMALL, f"method={sampler}", "budget=0.2", *standin_overrides(sampler)], tmp_path, cache_dir
    )
    results = train_and_evaluate(cfg)
    assert results["status"] == "ok"
    selection = results["selection"]
    assert selection["n_selected"] == selection["budget_size"] == round(0.2 * selection["pool_size"])
    assert np.isfinite(results["metrics"]["test/perplexity"])
    assert results["compute"]["reached_target_tokens"]
    rows = [json.loads(line) for line in (tmp_path / "selection.jsonl").read_text().splitlines()]
    assert len(rows) == selection["n_selected"]
    if sampler != "random":  # every kept example with its score, in the paper's plotted sign
        assert all(isinstance(r["score"], float) for r in rows)
    diagnostics = selection["rounds"][0]["diagnostics"]
    if sampler.startswith(("askllm_", "perplexity_")):
        scorer = diagnostics["scorer"]
        assert scorer["source"] == "standin" and scorer["standin"]["standin"] is True
        size = sampler.split("_")[1]
        assert scorer["standin"]["size"] == (size if size in SIZES else "large")
        if sampler in (f"perplexity_{s}" for s in CHECKPOINTS):
            fraction = CHECKPOINTS[sampler.split("_")[1]][0]
            assert scorer["standin"]["step"] == standins.checkpoint_steps(10, [fraction])[0]


# -- what each sampler keeps, given its scores ------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return load_dataset_splits(
        "text_mix",
        components={
            "pile": {
                "dataset": "pile",
                "params": {"data_files": str(SHARED_DATA / "pile_sample/toy_pile_data.jsonl")},
            },
            "c4": {"dataset": "c4", "params": {"data_files": str(SHARED_DATA / "c4_sample/c4_demo.jsonl")}},
        },
        duplicate_rate=0.05,
        junk_rate=0.05,
        seed=0,
    )


def build(pool, method: str, budget: float = 0.5, seed: int = 0, cache: Path | None = None, **kwargs):
    tokenizer = train_local_tokenizer([ex.target for ex in pool.train[:200]], vocab_size=300)
    return METHODS.get(method)(
        splits=pool, tokenizer=tokenizer, budget=budget, seed=seed, max_length=128, cache_dir=cache, **kwargs
    )


def ctx(seed: int = 0) -> SelectionContext:
    return SelectionContext(0, 0, 0, np.random.default_rng([seed, 0]), None, None)


def test_semdedup_removes_the_planted_near_duplicates_and_keeps_one_of_each(pool, tmp_path: Path):
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(pool.train):
        if ex.meta.get("dup_group"):
            groups.setdefault(ex.meta["dup_group"], []).append(i)
    redundant = sum(len(members) - 1 for members in groups.values())
    # room for the real corpus's own near-duplicates (boilerplate pages) besides the planted ones
    dm = build(pool, "semdedup", budget=len(pool.train) - 2 * redundant, cache=tmp_path, embedder="tfidf")
    chosen = {dm.index_of[i] for i in dm.select(ctx()).ids}
    kept = [sum(i in chosen for i in members) for members in groups.values()]
    removed = sum(len(members) - k for members, k in zip(groups.values(), kept, strict=True))
    assert removed >= 0.95 * redundant  # recall of the planted redundant copies
    assert sum(k == 1 for k in kept) >= 0.95 * len(groups)  # one kept of each group


def test_semdedup_and_prototypes_share_one_cached_clustering(pool, tmp_path: Path):
    a = build(pool, "semdedup", cache=tmp_path, embedder="tfidf").select(ctx())
    b = build(pool, "prototypes", cache=tmp_path, embedder="tfidf").select(ctx())
    assert len(list((tmp_path / "clusterings").glob("*/labels.npy"))) == 1
    assert a.diagnostics["n_clusters"] == b.diagnostics["n_clusters"]


def test_prototypes_keeps_the_examples_farthest_from_their_centroids(pool, tmp_path: Path):
    dm = build(pool, "prototypes", budget=0.3, cache=tmp_path, embedder="tfidf")
    scores = dm.pool_scores(None).values  # negated cosine to the own centroid
    chosen = [dm.index_of[i] for i in dm.select(ctx()).ids]
    assert scores[chosen].min() >= np.sort(scores)[::-1][len(chosen) - 1] - 1e-12


def test_density_thins_dense_regions_unlike_random(pool, tmp_path: Path):
    # the planted near-duplicate groups are the densest spots of the pool: a few documents at one point
    in_group = np.array([bool(ex.meta.get("dup_group")) for ex in pool.train])
    kwargs = {"embedder": "tfidf", "embedder_kwargs": {"dim": 64}, "cache": tmp_path}
    shares = {"density": [], "random": []}
    for seed in range(5):
        for method in shares:
            dm = build(pool, method, budget=0.3, seed=seed, **(kwargs if method == "density" else {}))
            shares[method].append(np.mean([in_group[dm.index_of[i]] for i in dm.select(ctx(seed)).ids]))
    assert np.mean(shares["density"]) < 0.85 * np.mean(shares["random"])
    dm = build(pool, "density", budget=0.3, **kwargs)
    assert dm.select(ctx()).ids == build(pool, "density", budget=0.3, **kwargs).select(ctx()).ids
    # the sketch ranks the pool as the exact kernel sums do
    exact = build(pool, "density", budget=0.3, mode="exact", **kwargs).pool_scores(None).values
    assert spearmanr(dm.pool_scores(None).values, exact).statistic >= 0.9


class FixedScores:
    """A pool-scoring method's ``pool_scores`` replaced by given values."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def __call__(self, ctx) -> PoolScores:
        return PoolScores(values=self.values)


@pytest.mark.parametrize(("band", "expected"), [("low", "top"), ("high", "bottom"), ("middle", "middle")])
def test_perplexity_bands_keep_the_configured_part_of_the_ranking(pool, band: str, expected: str):
    dm = build(pool, "perplexity", budget=0.2, band=band)
    n, k = len(pool.train), dm.budget_size
    values = -np.random.default_rng(0).permutation(n).astype(float)  # negated perplexities, all distinct
    dm.pool_scores = FixedScores(values)
    chosen = np.sort([dm.index_of[i] for i in dm.select(ctx()).ids])
    ranking = np.argsort(-values)  # lowest perplexity first
    part = {
        "top": ranking[:k],
        "bottom": ranking[n - k :],
        "middle": ranking[(n - k) // 2 : (n - k) // 2 + k],
    }
    assert np.array_equal(chosen, np.sort(part[expected]))


def test_ask_llm_keeps_the_top_k_with_ties_broken_by_id(pool):
    dm = build(pool, "askllm_small", budget=0.1, source="standin")
    values = np.zeros(len(pool.train))
    values[:5] = 1.0
    dm.pool_scores = FixedScores(values)
    first = dm.select(ctx(0)).ids
    top = {ex.id for ex in pool.train[:5]}
    assert set(first) >= top
    # the rest are the first of the tied examples in the id-hash order, whatever their pool positions
    tied = [pool.train[i].id for i in id_hash_order([ex.id for ex in pool.train]) if i >= 5]
    assert set(first) - top == set(tied[: dm.budget_size - 5])
    assert dm.select(ctx(7)).ids == first  # top-k: the seed plays no part


def test_perplexity_bands_put_examples_without_a_perplexity_last(pool):
    for band in ("low", "middle", "high"):
        dm = build(pool, "perplexity", budget=0.2, band=band)
        values = -np.random.default_rng(1).permutation(len(pool.train)).astype(float)
        values[:10] = -np.inf  # no perplexity (no token to predict)
        dm.pool_scores = FixedScores(values)
        chosen = [dm.index_of[i] for i in dm.select(ctx()).ids]
        assert min(chosen) >= 10, band


def test_quality_samplers_refuse_bad_settings(pool):
    with pytest.raises(ConfigError, match="method.band='lowest'"):
        build(pool, "perplexity", band="lowest")
    with pytest.raises(ConfigError, match="method.source=hub needs method.hub.name_or_path"):
        build(pool, "perplexity", source="hub", hub={"name_or_path": None})
    with pytest.raises(ConfigError, match="no {text} placeholder"):
        build(pool, "ask_llm", template="Is this good?")
    with pytest.raises(ConfigError, match="method.standin has unknown keys"):
        build(pool, "ask_llm", standin={"sise": "xl"})


# -- the stand-ins -----------------------------------------------------------------------------------------------


@pytest.mark.slow
@requires_shared_data
def test_the_ask_llm_stand_in_learns_to_tell_curated_text_from_degraded_copies(tmp_path: Path):
    # curated text of several styles, as in conf/method/ask_llm.yaml
    books = load_dataset_splits(
        "gutenberg", data_files=str(SHARED_DATA / "gutenberg/pg*.txt"), max_files=10, max_docs_per_file=10
    )
    math = load_dataset_splits("math", data_files=str(SHARED_DATA / "math/train.jsonl"))
    gsm8k = load_dataset_splits("gsm8k", data_files=str(SHARED_DATA / "gsm8k/train.jsonl"))
    texts = [ex.target for ex in books.train]
    texts += [f"{ex.prompt}\n{ex.target}" for ex in [*math.train[:100], *gsm8k.train[:100]]]
    settings = standins.TrainingSettings(steps=150, lr=1e-3)
    path = standins.ask_llm_judge(texts, "base", ASK_LLM_TEMPLATE, tmp_path, settings, max_text_words=60)
    record = standins.read_standin_record(path)
    # it tells held-out curated texts from degraded copies of them (chance: 0.5)
    assert record["standin"] and record["heldout_accuracy"] >= 0.65
    scorer = AskLLMScorer.from_pretrained(str(path), max_text_tokens=96, progress=False)
    # through the scorer, on books it has never seen: clean text above its degraded copies
    unseen = load_dataset_splits(
        "gutenberg", data_files=str(SHARED_DATA / "gutenberg/[0-9]*.txt"), max_files=4, max_docs_per_file=10
    )
    clean = [standins.clip_words(ex.target, 60) for ex in unseen.train[:30]]
    rng = np.random.default_rng(0)
    degraded = [standins.degrade(t, standins.DEGRADATIONS[i % 4], rng) for i, t in enumerate(clean)]
    assert scorer.score_texts(clean).mean() > scorer.score_texts(degraded).mean() + 0.1
    again = standins.ask_llm_judge(texts, "base", ASK_LLM_TEMPLATE, tmp_path, settings, max_text_words=60)
    assert again == path  # cached, not retrained


@pytest.mark.slow
def test_the_perplexity_proxy_checkpoints_improve_along_training(pool, tmp_path: Path):
    texts = [ex.target for ex in pool.train[:300]]
    settings = standins.TrainingSettings(steps=60, max_length=64, vocab_size=300)
    paths = standins.causal_proxy_checkpoints(texts, "small", tmp_path, settings)
    assert sorted(paths) == [*standins.checkpoint_steps(60), 60]
    held_out = [ex.target for ex in pool.test[:60]]
    mean_ppl = [
        float(np.mean(PerplexityScorer.from_pretrained(str(paths[s]), progress=False).score_texts(held_out)))
        for s in sorted(paths)
    ]
    assert mean_ppl[0] > mean_ppl[2] > mean_ppl[-1]
    mtime = (paths[60] / "standin.json").stat().st_mtime
    assert standins.causal_proxy_checkpoints(texts, "small", tmp_path, settings) == paths
    assert (paths[60] / "standin.json").stat().st_mtime == mtime  # cached, not retrained


def test_stand_in_settings_are_checked():
    with pytest.raises(ConfigError, match="stand-in steps=0"):
        standins.TrainingSettings(steps=0)
    with pytest.raises(ConfigError, match="size 'huge' is unknown"):
        standins.causal_proxy_checkpoints(["a b c"], "huge", "/nonexistent")
    with pytest.raises(ConfigError, match="checkpoint fraction 1.5"):
        standins.checkpoint_steps(100, [1.5])
