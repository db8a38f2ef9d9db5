"""Selection sharded across processes (``p3bench.sharded``) gives what one process gives.

Pure properties first: a RACE sketch built per shard and merged has the counts of the sketch of the whole
pool, and the scores; fixed-point cluster sums of shards add up to the pool's; spherical Lloyd k-means on
shards that add their sums through a reducer gives bitwise the clustering of one process; a scorer's and an
encoder's batches dealt to shards score and embed as one pass does. Then two CPU processes (gloo): a
perplexity pass, the embedding pass (MiniLM and tfidf), the density sketch and k-means give every process
bitwise the arrays of one process, and the caches they fill are the one-process entries. At the datamodule
level (slow), two P3 rounds (scores, pace, DPP on the policy's features conditioned on the previous round)
give every one of two processes the records of one process. Through the CLI (slow), a two-process run of
``density`` and of ``p3`` selects round 0 as a one-process run does.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from p3bench.algorithms.density import RaceSketch, lsh_kernel_sums
from p3bench.algorithms.kmeans import fixed_point_sums, lloyd_kmeans, spherical_kmeans
from p3bench.embeddings import Embedder, build_embedder, cached_embeddings_counted
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.scoring.cache import cached_scores_counted
from p3bench.scoring.perplexity import PerplexityScorer
from p3bench.sharded import (
    deal_batches,
    sharded_embeddings_counted,
    sharded_lsh_kernel_sums,
    sharded_scores_counted,
    sharded_spherical_kmeans,
)

from .conftest import round_zero_on_one_and_two_processes, tiny_llama

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "ran",
    "on",
    "under",
    "mat",
    "tree",
    "seven",
    "plus",
    "equals",
    "river",
    "stone",
    "light",
    "blue",
    "quick",
    "slow",
]


def texts(n: int = 50, seed: int = 0) -> list[str]:
    """``n`` distinct sentences of 1 to 30 words (so that batches differ in length)."""
    rng = np.random.default_rng(seed)
    return [f"{i} " + " ".join(rng.choice(WORDS, size=int(rng.integers(1, 30)))) for i in range(n)]


def clustered(n: int = 400, dim: int = 16, seed: int = 0, noise: float = 0.4) -> np.ndarray:
    """``n`` unit rows around six centres (overlapping clusters for a large ``noise``)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((6, dim))
    X = centres[rng.integers(0, 6, size=n)] + noise * rng.standard_normal((n, dim))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


SKETCH = {"rows": 16, "buckets": 257, "bandwidth": 0.6, "hashes_per_row": 2, "seed": 5}


# -- merge properties ------------------------------------------------------------------------------------


def test_sketches_of_shards_merge_into_the_sketch_of_the_pool() -> None:
    X = clustered()
    whole = RaceSketch.create(X.shape[1], **SKETCH)
    whole.update(X)
    parts = np.array_split(np.random.default_rng(1).permutation(len(X)), [37, 250])  # uneven, shuffled
    shards = []
    for part in parts:
        sketch = RaceSketch.create(X.shape[1], **SKETCH)
        sketch.update(X[part], chunk_size=13)
        shards.append(sketch)
    merged = shards[0].merge(shards[1]).merge(shards[2])
    assert merged.n == whole.n == len(X)
    assert merged.counts.dtype == np.int64 and np.array_equal(merged.counts, whole.counts)
    # any order, any grouping; an empty shard changes nothing
    assert np.array_equal((shards[2] + (shards[0] + shards[1])).counts, whole.counts)
    empty = RaceSketch.create(X.shape[1], **SKETCH)
    empty.update(X[:0])
    assert np.array_equal((merged + empty).counts, whole.counts)
    # every row sits in one bucket per sketch row
    assert (whole.counts.sum(axis=1) == len(X)).all()
    # the merged sketch reads the scores of one pass, from the rows or from their kept bucket ids
    expected = lsh_kernel_sums(X, **SKETCH)
    assert np.array_equal(merged.query(X), expected)
    ids = RaceSketch.create(X.shape[1], **SKETCH).update(X[parts[1]], keep_ids=True)
    assert np.array_equal(merged.query(ids=ids), expected[parts[1]])
    np.testing.assert_array_equal(
        merged.query(X, debias=True), lsh_kernel_sums(X, debias=True, **SKETCH), strict=True
    )


def test_sketches_with_different_hashes_do_not_merge() -> None:
    a = RaceSketch.create(8, **SKETCH)
    b = RaceSketch.create(8, **{**SKETCH, "seed": 6})
    with pytest.raises(ValueError, match="different hash functions"):
        a.merge(b)
    with pytest.raises(ValueError, match="exactly one of X"):
        a.query()


def test_fixed_point_cluster_sums_of_shards_add_up_to_the_pools() -> None:
    X = clustered(n=300)
    labels = np.random.default_rng(2).integers(0, 7, size=len(X))
    sums, counts = fixed_point_sums(X, labels, 7)
    parts = np.array_split(np.random.default_rng(3).permutation(len(X)), 3)
    shard_sums = [fixed_point_sums(X[p], labels[p], 7) for p in parts]
    assert np.array_equal(sum(s for s, _ in shard_sums), sums)
    assert np.array_equal(sum(c for _, c in shard_sums), counts)
    assert np.array_equal(counts, np.bincount(labels, minlength=7))
    # the fixed point is within half a quantum per coordinate of the float64 sums
    exact = np.zeros((7, X.shape[1]))
    np.add.at(exact, labels, X.astype(np.float64))
    assert np.abs(sums / 2.0**32 - exact).max() <= counts.max() * 2.0**-33


class ThreadReducer:
    """Sums arrays across ``world`` threads, like an all-reduce (every thread gets the total)."""

    def __init__(self, world: int) -> None:
        self.barrier = threading.Barrier(world)
        self.parts: dict[int, np.ndarray] = {}
        self.total: np.ndarray | None = None

    def for_rank(self, rank: int):
        def reduce(array: np.ndarray) -> np.ndarray:
            self.parts[rank] = array
            if self.barrier.wait() == 0:
                self.total = sum(self.parts[r] for r in sorted(self.parts))
            self.barrier.wait()
            total = self.total
            self.barrier.wait()  # nobody overwrites the total before every thread has read it
            return total

        return reduce


def test_lloyd_kmeans_on_shards_equals_one_process() -> None:
    X = clustered(n=500, seed=4, noise=1.5)
    one = lloyd_kmeans(X, 6, seed=1)
    assert spherical_kmeans(X, 6, seed=1, algorithm="lloyd").labels.tolist() == one.labels.tolist()
    world = 3
    reducer = ThreadReducer(world)
    results: dict[int, object] = {}

    def shard(rank: int) -> None:
        rows = np.arange(rank, len(X), world)
        results[rank] = (rows, lloyd_kmeans(X, 6, seed=1, rows=rows, reduce=reducer.for_rank(rank)))

    threads = [threading.Thread(target=shard, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    labels = np.empty(len(X), dtype=np.int64)
    for rank in range(world):
        rows, result = results[rank]
        labels[rows] = result.labels
        assert np.array_equal(result.centroids, one.centroids)
        assert result.n_iter == one.n_iter and result.mean_cosine == one.mean_cosine
    assert np.array_equal(labels, one.labels)
    assert 1 < one.n_iter < 100 and len(set(one.labels.tolist())) == 6
    # the centroids are the normalised means of the labels
    means = np.stack([X[one.labels == c].astype(np.float64).sum(axis=0) for c in range(6)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    np.testing.assert_allclose(one.centroids, means, atol=1e-6)


def test_deal_batches_partitions_the_plan() -> None:
    plan = [[4, 0], [3], [1, 2], [5]]
    dealt = [deal_batches(plan, rank, 3) for rank in range(3)]
    assert dealt == [[4, 0, 5], [3], [1, 2]]
    assert deal_batches(plan, 0, 1) == [4, 0, 3, 1, 2, 5]


@pytest.fixture(scope="module")
def proxy() -> PerplexityScorer:
    corpus = texts(200, seed=9)
    tokenizer = train_local_tokenizer(corpus, vocab_size=120)
    return PerplexityScorer(
        tiny_llama(tokenizer, num_layers=1, max_positions=64), tokenizer, batch_size=4, progress=False
    )


def test_batches_of_a_scorers_plan_dealt_to_shards_score_as_one_pass(proxy: PerplexityScorer) -> None:
    pool = [*texts(15), "", *texts(15, seed=1)]  # the empty text has nothing to predict: in no batch
    full, tokens = proxy.score_texts_counted(pool)
    plan = proxy.batch_plan(pool)
    planned = sorted(p for batch in plan for p in batch)
    assert planned == [i for i in range(31) if i != 15] and all(len(b) <= 4 for b in plan)
    for world in (2, 3):
        got = np.full(len(pool), np.nan)
        total = 0
        for rank in range(world):
            mine = deal_batches(plan, rank, world)
            scores, used = proxy.score_texts_counted([pool[i] for i in mine])
            got[mine] = scores
            total += used
        assert np.array_equal(got, full, equal_nan=True) and total == tokens  # bitwise
    assert np.isnan(full[15]) and np.isfinite(np.delete(full, 15)).all()


def test_batches_of_an_encoder_dealt_to_shards_embed_as_one_pass() -> None:
    from p3bench.sharded import _embedding_batches

    embedder = build_embedder("minilm", batch_size=8, progress=False)
    pool = texts(40)
    full, tokens = embedder.embed_counted(pool)
    plan = _embedding_batches(embedder, pool)
    got = np.zeros_like(full)
    total = 0
    for rank in range(3):
        mine = deal_batches(plan, rank, 3)
        vectors, used = embedder.embed_counted([pool[i] for i in mine])
        got[mine] = vectors
        total += used
    assert np.array_equal(got, full) and total == tokens


def test_cluster_samplers_take_the_lloyd_clustering_and_cache_it_apart(tmp_path: Path) -> None:
    from p3bench.data.synthetic_math import load_synthetic_math
    from p3bench.errors import ConfigError
    from p3bench.methods import METHODS
    from p3bench.methods.base import SelectionContext

    splits = load_synthetic_math(n_train=120, n_val=10, n_test=10, seed=1)
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=200)

    def sampler(kmeans: str):
        return METHODS.get("prototypes")(
            splits=splits,
            tokenizer=tokenizer,
            budget=0.5,
            seed=0,
            max_length=96,
            cache_dir=tmp_path,
            embedder="tfidf",
            embedder_kwargs={"dim": 32},
            progress=False,
            kmeans=kmeans,
        )

    lloyd = sampler("lloyd")
    clusters = lloyd.clusters()
    expected = spherical_kmeans(lloyd.vectors(), clusters.n_clusters, seed=0, algorithm="lloyd")
    assert np.array_equal(clusters.labels, expected.labels)
    context = SelectionContext(0, 0, 0, np.random.default_rng(0), None, None)
    assert lloyd.select(context).diagnostics["kmeans"] == "lloyd"
    assert "kmeans" not in sampler("sklearn").select(context).diagnostics  # the default's record as before
    names = sorted(path.parent.name.split("-")[0] for path in (tmp_path / "clusterings").glob("*/labels.npy"))
    assert names == ["kmeans", "lloyd"]
    # a second sampler reads the cached lloyd clustering
    assert np.array_equal(sampler("lloyd").clusters().labels, expected.labels)
    with pytest.raises(ConfigError, match="method.kmeans='minibatch'"):
        sampler("minibatch")


# -- two processes -----------------------------------------------------------------------------------------


class NoModel(Embedder):
    """An embedder with another's name and fingerprint that refuses to embed: succeeds on a cache hit only."""

    def __init__(self, inner: Embedder) -> None:
        self.inner, self.name = inner, inner.name

    @property
    def fingerprint(self) -> str:
        return self.inner.fingerprint

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        raise AssertionError("the cache should have served these vectors")


def passes(proxy: PerplexityScorer, cache: Path) -> dict[str, object]:
    """Every sharded pass on a small pool (one process: the functions they wrap)."""
    pool = texts(50)
    minilm = build_embedder("minilm", batch_size=8, progress=False)
    vectors, vector_tokens = sharded_embeddings_counted(minilm, pool, cache / "embeddings")
    tfidf = sharded_embeddings_counted(build_embedder("tfidf", dim=16, progress=False), pool, None)
    scored = sharded_scores_counted(proxy, pool, cache / "scores")
    X = clustered(n=200, seed=7, noise=1.5)
    return {
        "minilm": (vectors, vector_tokens),
        # fewer batches than processes: process 1 embeds nothing and still gets every vector
        "minilm_one_batch": sharded_embeddings_counted(minilm, pool[:5], None),
        "tfidf": tfidf,
        "perplexity": (scored.scores, scored.forward_tokens),
        "perplexity_uncached": sharded_scores_counted(proxy, pool, None).scores,
        "perplexity_hit": sharded_scores_counted(proxy, pool, cache / "scores").from_cache,
        "density": sharded_lsh_kernel_sums(X, **SKETCH),
        "density_default_bandwidth": sharded_lsh_kernel_sums(X, rows=8, buckets=101, seed=1, debias=True),
        "lloyd": sharded_spherical_kmeans(X, 5, seed=2, algorithm="lloyd"),
        "sklearn": sharded_spherical_kmeans(X, 5, seed=2),
    }


def _worker(rank: int, world: int, rendezvous: str, saved: str, cache: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        proxy = torch.load(saved, weights_only=False)
        torch.save(passes(proxy, Path(cache)), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_compute_every_pass_as_one_process(proxy: PerplexityScorer, tmp_path: Path) -> None:
    saved = tmp_path / "proxy.pt"
    torch.save(proxy, saved)
    out = str(tmp_path / "passes")
    two_cache = tmp_path / "two"
    mp.spawn(
        _worker,
        args=(2, str(tmp_path / "rendezvous"), str(saved), str(two_cache), out),
        nprocs=2,
        join=True,
    )
    two = [torch.load(f"{out}.{rank}", weights_only=False) for rank in range(2)]
    one = passes(proxy, tmp_path / "one")
    for rank in range(2):
        got = two[rank]
        for key in ("minilm", "minilm_one_batch", "tfidf", "perplexity"):
            (values, tokens), (expected, expected_tokens) = got[key], one[key]
            assert np.array_equal(values, expected, equal_nan=True), (key, rank)
            assert tokens == expected_tokens, (key, rank)
        assert np.array_equal(got["perplexity_uncached"], one["perplexity"][0], equal_nan=True)
        assert got["perplexity_hit"] and one["perplexity_hit"]  # the second call: every process hit
        assert np.array_equal(got["density"], one["density"])
        assert np.array_equal(got["density_default_bandwidth"], one["density_default_bandwidth"])
        for key in ("lloyd", "sklearn"):
            assert np.array_equal(got[key].labels, one[key].labels), (key, rank)
            assert np.array_equal(got[key].centroids, one[key].centroids), (key, rank)
            assert got[key].algorithm == one[key].algorithm
    assert one["minilm"][1] > 0 and one["perplexity"][1] > 0
    assert len(set(one["density"].tolist())) > 10 and len(set(one["lloyd"].labels.tolist())) == 5
    # the two-process run filled the caches under the one-process keys
    pool = texts(50)
    minilm = build_embedder("minilm", batch_size=8, progress=False)
    cached, _ = cached_embeddings_counted(NoModel(minilm), pool, two_cache / "embeddings")
    assert np.array_equal(cached, one["minilm"][0])
    hit = cached_scores_counted(proxy, pool, two_cache / "scores")
    assert hit.from_cache and hit.forward_tokens == one["perplexity"][1]
    assert np.array_equal(hit.scores, one["perplexity"][0])


# -- a dynamic round through the CLI -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "method",
    [
        ["method=p3", "method.dpp.embedder=policy"],
        ["method=density", "method.rows=32", "method.buckets=512"],
    ],
    ids=["p3", "density"],
)
def test_a_two_process_run_selects_round_zero_as_one_process_does(
    method: list[str], tmp_path: Path, cache_dir: Path
) -> None:
    one, two = round_zero_on_one_and_two_processes(
        [*method, "dataset.params.n_train=120"], tmp_path, cache_dir
    )
    assert two["n"] == one["n"] > 0
    assert two["ids_sha256"] == one["ids_sha256"]
    assert two["forward_tokens"] == one["forward_tokens"] > 0
    timeless = {key: value for key, value in one["diagnostics"].items() if "seconds" not in key}
    assert {key: two["diagnostics"].get(key) for key in timeless} == timeless


# -- a full dynamic round at the datamodule level ----------------------------------------------------------


def p3_two_rounds(saved: dict) -> list[dict]:
    """Rounds 0 and 1 of ``method=p3`` with its default pieces (likelihood scores, the quantile pace, the
    DPP on the policy's features conditioned on the previous round; linear pace weights, so that the
    weights are numbers that differ), the model perturbed by a seeded noise between the rounds: each
    round's record, its seconds left out."""
    from types import SimpleNamespace

    from p3bench.methods import METHODS
    from p3bench.models.module import SelectionLM

    splits, tokenizer = saved["splits"], saved["tokenizer"]
    # built here, not unpickled: transformers registers what a model records (its hidden states) when the
    # model is constructed, in the process that constructs it
    model = tiny_llama(tokenizer)
    model.load_state_dict(saved["weights"])
    module = SelectionLM(model, tokenizer, torch.optim.SGD, evaluator=lambda text, example: False)
    dm = METHODS.get("p3")(
        splits=splits,
        tokenizer=tokenizer,
        budget=0.2,
        seed=0,
        eval_batch_size=8,  # nine scoring batches of eight: five on process 0, four on process 1
        max_length=96,
        progress=False,
        # the untrained model's difficulties all sit near the threshold, where the default floor (0.05) makes
        # every linear weight equal; a negligible floor keeps them apart
        pace={"weights": "linear", "min_weight": 1e-12},
    )
    # what run_selection reads of a Trainer: the current model, the epoch and step, the device
    dm.trainer = SimpleNamespace(
        lightning_module=module,
        current_epoch=0,
        global_step=0,
        optimizers=[],
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
    )
    records = [dm.run_selection(0)]
    noise = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=noise))
    dm.trainer.current_epoch, dm.trainer.global_step = 1, 8
    records.append(dm.run_selection(1))
    out = []
    for record in records:
        plain = dataclasses.asdict(record)
        del plain["seconds"]
        plain["diagnostics"] = {k: v for k, v in plain["diagnostics"].items() if "seconds" not in k}
        out.append(plain)
    return out


def _rounds_worker(rank: int, world: int, rendezvous: str, saved: str, out: str) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        torch.save(p3_two_rounds(torch.load(saved, weights_only=False)), f"{out}.{rank}")
    finally:
        if world > 1:
            dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_select_two_p3_rounds_as_one_process(tmp_path: Path) -> None:
    """Rounds 0 and 1 of P3 (scoring, pace, DPP conditioned on round 0) on two processes (gloo) give every
    process bitwise the ids, weights, scores, tokens and diagnostics of one process."""
    from p3bench.data.synthetic_math import load_synthetic_math

    splits = load_synthetic_math(n_train=72, n_val=8, n_test=8, seed=2)
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=200)
    saved = tmp_path / "saved.pt"
    weights = tiny_llama(tokenizer, seed=3).state_dict()
    torch.save({"splits": splits, "tokenizer": tokenizer, "weights": weights}, saved)
    found = {}
    for world in (1, 2):  # both in fresh processes with one thread each, so only the sharding differs
        out = str(tmp_path / f"world{world}")
        rendezvous = str(tmp_path / f"rendezvous{world}")
        mp.spawn(_rounds_worker, args=(world, rendezvous, str(saved), out), nprocs=world, join=True)
        found[world] = [torch.load(f"{out}.{rank}", weights_only=False) for rank in range(world)]
    (one,) = found[1]
    for rank, two in enumerate(found[2]):
        for round_index in (0, 1):
            got, expected = two[round_index], one[round_index]
            for key in ("round", "ids", "weights", "scores", "forward_tokens", "compute"):
                assert got[key] == expected[key], (key, round_index, rank)
            assert got["diagnostics"] == expected["diagnostics"], (round_index, rank)
    first, second = one
    k = len(first["ids"])
    assert k == len(second["ids"]) == round(0.2 * 72)
    assert first["forward_tokens"] > 0 and second["forward_tokens"] == first["forward_tokens"]
    # the pieces ran: the pace admitted more in round 1, the DPP ran both rounds, round 1 conditioned on 0
    assert first["diagnostics"]["admitted"] < second["diagnostics"]["admitted"] < 72
    assert "dpp_kernel_effective_rank" in first["diagnostics"]
    assert second["diagnostics"]["dpp_conditioned_on"] == k
    # the perturbed model scores the pool otherwise, and round 1 is not round 0
    assert first["scores"] != second["scores"] and set(first["ids"]) != set(second["ids"])
    assert first["diagnostics"]["mean_score"] != second["diagnostics"]["mean_score"]
    assert len(set(first["weights"])) > 1 and len(set(second["weights"])) > 1
