"""Density sampling (``p3bench.algorithms.density``, arXiv 2402.09668 §3.2-3.3) against simple references:
the p-stable collision probability against Datar et al.'s integral and a Monte-Carlo estimate, the RACE
sketch against the exact O(n^2) kernel sums, the blocked exact sums against a dense computation, and the
exponential-key sampler against the probabilities of sequential weighted draws."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import integrate, stats

from p3bench.algorithms.density import (
    DEFAULT_BUCKETS,
    DEFAULT_HASHES_PER_ROW,
    DEFAULT_ROWS,
    DensityResult,
    PStableHash,
    default_bandwidth,
    density_sample,
    exact_kernel_sums,
    inverse_propensity_sample,
    lsh_kernel_sums,
    pstable_collision_probability,
)
from p3bench.errors import ConfigError

DIM = 384


# ----------------------------------------------------------------------------------------------------------
# Data


def unit(X: np.ndarray) -> np.ndarray:
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def mixture_on_sphere(n: int, n_clusters: int, seed: int, dim: int = DIM) -> np.ndarray:
    """Gaussian mixture on the unit sphere with unequal clusters: Zipf weights, spreads (noise norm) in
    [0.3, 1.0], so that the density varies between and within clusters."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((n_clusters, dim)))
    weights = 1.0 / np.arange(1, n_clusters + 1)
    spreads = rng.uniform(0.3, 1.0, n_clusters)
    label = rng.choice(n_clusters, size=n, p=weights / weights.sum())
    X = centres[label] + spreads[label, None] * rng.standard_normal((n, dim)) / math.sqrt(dim)
    return unit(X).astype(np.float32)


def one_dense_cluster(seed: int, n_dense: int = 1000, n_sparse: int = 50, per_sparse: int = 20):
    """One cluster with half of the points and ``n_sparse`` clusters of ``per_sparse`` points each (all with
    the same spread). Returns the points and the cluster label of each (0: the dense one)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((n_sparse + 1, DIM)))
    label = np.concatenate([np.zeros(n_dense, dtype=int), np.repeat(np.arange(1, n_sparse + 1), per_sparse)])
    X = centres[label] + 0.35 * rng.standard_normal((label.size, DIM)) / math.sqrt(DIM)
    return unit(X).astype(np.float32), label


@pytest.fixture(scope="module")
def mixture() -> np.ndarray:
    return mixture_on_sphere(2000, 20, seed=0)


# ----------------------------------------------------------------------------------------------------------
# The collision probability


def datar_integral(d: float, w: float) -> float:
    """Datar et al. 2004, §3.2: p(c) = int_0^w (1/c) f_2(t/c) (1 - t/w) dt, f_2 the density of |N(0,1)|."""

    def integrand(t: float) -> float:
        return (1.0 / d) * 2.0 / math.sqrt(2.0 * math.pi) * math.exp(-((t / d) ** 2) / 2.0) * (1.0 - t / w)

    return integrate.quad(integrand, 0.0, w)[0]


@pytest.mark.parametrize("w", [0.5, 1.0, 3.0])
def test_collision_probability_closed_form_matches_datar_integral(w: float) -> None:
    for d in [0.01, 0.1, 0.5, 1.0, 2.0, 10.0]:
        assert pstable_collision_probability(d, w) == pytest.approx(datar_integral(d, w), abs=1e-9)


def test_collision_probability_shape_limits_and_monotonicity() -> None:
    d = np.linspace(0.0, 20.0, 401)
    p = pstable_collision_probability(d, 1.0)
    assert p.shape == d.shape
    assert p[0] == 1.0
    assert np.all(np.diff(p) < 0)
    assert np.all((p > 0) & (p <= 1))
    # p(d) ~ w / (sqrt(2 pi) d) for d >> w
    assert pstable_collision_probability(1e4, 1.0) == pytest.approx(1e-4 / math.sqrt(2 * math.pi), rel=1e-3)
    # it depends on d / w only
    assert pstable_collision_probability(3.0, 2.0) == pytest.approx(pstable_collision_probability(1.5, 1.0))
    assert np.ndim(pstable_collision_probability(1.0, 1.0)) == 0
    with pytest.raises(ValueError, match="distance=-1"):
        pstable_collision_probability([1.0, -1.0], 1.0)
    with pytest.raises(ConfigError, match="bandwidth=0"):
        pstable_collision_probability(1.0, 0.0)


@pytest.mark.parametrize("hashes_per_row", [1, 3])
def test_collision_probability_matches_monte_carlo(hashes_per_row: int) -> None:
    """Fraction of sketch rows where two points at distance d get the same code (K-tuple), over 100 random
    pairs x 2,000 independent rows: p(d)^K within 4.5 standard errors."""
    rng = np.random.default_rng(1)
    w, pairs, rows = 1.0, 100, 2000
    lsh = PStableHash.create(DIM, rows=rows, buckets=1000, bandwidth=w, hashes_per_row=hashes_per_row, seed=2)
    for d in [0.1, 0.5, 1.0, 2.0, 5.0]:
        x = unit(rng.standard_normal((pairs, DIM)))
        y = x + d * unit(rng.standard_normal((pairs, DIM)))
        same = np.all(lsh.codes(x) == lsh.codes(y), axis=2)  # (pairs, rows)
        expected = float(pstable_collision_probability(d, w)) ** hashes_per_row
        se = math.sqrt(expected * (1 - expected) / same.size)
        assert abs(same.mean() - expected) < 4.5 * se + 2e-3, (d, same.mean(), expected)


def test_bucket_hash_spreads_codes_uniformly() -> None:
    """Distinct codes land in the B buckets uniformly (chi-square), and bucket ids are in [0, B)."""
    X = mixture_on_sphere(5000, 5, seed=3)
    B = 64
    lsh = PStableHash.create(DIM, rows=16, buckets=B, bandwidth=0.05, hashes_per_row=2, seed=0)
    ids = lsh.bucket_ids(X, chunk_size=1000)
    assert ids.shape == (5000, 16) and ids.min() >= 0 and ids.max() < B
    codes = lsh.codes(X)
    for r in range(16):
        _, first = np.unique(codes[:, r, :], axis=0, return_index=True)  # one point per distinct code
        counts = np.bincount(ids[first, r], minlength=B)
        assert stats.chisquare(counts).pvalue > 1e-4


# ----------------------------------------------------------------------------------------------------------
# Exact kernel sums


def naive_kernel_sums(X: np.ndarray, kernel: str, w: float, K: int) -> np.ndarray:
    X = X.astype(np.float64)
    d = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    if kernel == "gaussian":
        return np.exp(-(d**2) / (2 * w * w)).sum(axis=1)
    return (pstable_collision_probability(d, w) ** K).sum(axis=1)


@pytest.mark.parametrize(("kernel", "K"), [("pstable", 1), ("pstable", 4), ("gaussian", 1)])
@pytest.mark.parametrize("block_size", [1, 7, 64, 1000])
def test_exact_blocked_equals_dense(kernel: str, K: int, block_size: int) -> None:
    X = mixture_on_sphere(150, 4, seed=4, dim=16)
    w = 0.7
    got = exact_kernel_sums(X, kernel=kernel, bandwidth=w, hashes_per_row=K, block_size=block_size)
    np.testing.assert_allclose(got, naive_kernel_sums(X, kernel, w, K), rtol=1e-9)
    assert np.all(got >= 1.0)  # the point's own term


def test_exact_rejects_unknown_kernel() -> None:
    with pytest.raises(ConfigError, match="kernel='cosine'"):
        exact_kernel_sums(np.ones((3, 2)), kernel="cosine")


# ----------------------------------------------------------------------------------------------------------
# The sketch


def test_sketch_rank_correlation_with_exact_sums(mixture: np.ndarray) -> None:
    """At the default sketch (R = 128 rows of K = 8 hashes, B = 20,000 buckets), on 2,000 points of a
    20-cluster Gaussian mixture on the 384-dimensional unit sphere, the sketch's scores rank the points like
    the exact sums of p(d)^8: Spearman >= 0.9 for every seed (about 0.95 in practice), and >= 0.95 with 512
    rows (about 0.98)."""
    w = default_bandwidth(mixture)
    exact = exact_kernel_sums(mixture, bandwidth=w, hashes_per_row=DEFAULT_HASHES_PER_ROW)
    assert exact.max() / exact.min() > 5  # the density does vary
    for seed in range(3):
        scores = lsh_kernel_sums(mixture, bandwidth=w, seed=seed)
        assert stats.spearmanr(scores, exact)[0] >= 0.9
    scores = lsh_kernel_sums(mixture, rows=512, bandwidth=w)
    assert stats.spearmanr(scores, exact)[0] >= 0.95


def test_sketch_with_one_hash_per_row_tracks_the_flat_kernel(mixture: np.ndarray) -> None:
    """K = 1 (the kernel p(d)) with 1,000 rows as in the paper: Spearman >= 0.85 (about 0.88; the sums vary
    by only 10% here, so the ranks are harder to get right)."""
    w = default_bandwidth(mixture)
    exact = exact_kernel_sums(mixture, bandwidth=w, hashes_per_row=1)
    scores = lsh_kernel_sums(mixture, rows=1000, bandwidth=w, hashes_per_row=1)
    assert stats.spearmanr(scores, exact)[0] >= 0.85


def test_sketch_mean_over_seeds_converges_to_exact_sums() -> None:
    """Each sketch row is unbiased for sum_x [p^K + (1 - p^K) / B]. With few buckets (B = 100, so that the
    collision term n/B = 6 is visible next to sums of 14-25), the mean over 48 seeds of 128 rows matches it
    within 1% on average (the standard error of that average is about 0.2%), the debiased scores match the
    exact sums, and the error shrinks like 1/sqrt(seeds)."""
    X = mixture_on_sphere(600, 6, seed=5)
    n, w, K, B, rows, seeds = X.shape[0], default_bandwidth(X), 4, 100, 128, 48
    exact = exact_kernel_sums(X, bandwidth=w, hashes_per_row=K)
    expected_raw = exact * (1 - 1 / B) + n / B
    raw = np.array(
        [
            lsh_kernel_sums(X, rows=rows, buckets=B, bandwidth=w, hashes_per_row=K, seed=s)
            for s in range(seeds)
        ]
    )
    debiased = np.maximum((raw - n / B) / (1 - 1 / B), 1.0)
    np.testing.assert_array_equal(
        debiased[0], lsh_kernel_sums(X, rows=rows, buckets=B, bandwidth=w, hashes_per_row=K, debias=True)
    )
    mean_raw = raw.mean(axis=0)
    assert abs(np.mean(mean_raw / expected_raw) - 1) < 0.01
    assert abs(np.mean(debiased.mean(axis=0) / exact) - 1) < 0.015
    assert np.mean(raw[0] / exact) - 1 > 0.1  # without the correction the collisions show
    err_1 = np.sqrt(np.mean((raw / expected_raw - 1) ** 2))
    err_all = np.sqrt(np.mean((mean_raw / expected_raw - 1) ** 2))
    assert err_all < 0.3 * err_1  # 1/sqrt(48) = 0.14
    # per point: the 48-seed mean is within 5 standard errors of the expectation for all but a few points
    z = (mean_raw - expected_raw) / (raw.std(axis=0, ddof=1) / math.sqrt(seeds))
    assert np.mean(np.abs(z) > 5) < 0.01


def test_sketch_bounds_duplicates_and_huge_bandwidth() -> None:
    X = mixture_on_sphere(300, 3, seed=6)
    X = np.concatenate([X, X[:10]])  # duplicates of the first ten points
    scores = lsh_kernel_sums(X, rows=64, buckets=500)
    assert scores.shape == (310,) and scores.dtype == np.float64
    assert np.all((scores >= 1) & (scores <= 310))
    np.testing.assert_array_equal(scores[:10], scores[300:])
    assert np.all(scores[:10] >= 2)  # each collides with its copy in every row
    # a bin width far above every distance: every point shares every bucket with every other
    np.testing.assert_array_equal(lsh_kernel_sums(X, rows=16, bandwidth=1e6), np.full(310, 310.0))
    assert lsh_kernel_sums(np.zeros((0, 5)), bandwidth=1.0).shape == (0,)
    assert lsh_kernel_sums(X[:1], rows=4).tolist() == [1.0]


def test_sketch_is_deterministic_and_independent_of_chunking_and_caching(mixture: np.ndarray) -> None:
    X = mixture[:1500]
    base = lsh_kernel_sums(X, seed=3)
    np.testing.assert_array_equal(base, lsh_kernel_sums(X, seed=3))
    assert not np.array_equal(base, lsh_kernel_sums(X, seed=4))
    np.testing.assert_array_equal(base, lsh_kernel_sums(X, seed=3, cache_buckets=False))
    np.testing.assert_array_equal(base, lsh_kernel_sums(X, seed=3, cache_buckets=True, chunk_size=500))
    # tiny chunks take other BLAS code paths, whose rounding can move a projection across a bin edge
    small = lsh_kernel_sums(X, seed=3, chunk_size=7)
    assert np.mean(small == base) > 0.95
    np.testing.assert_allclose(small, base, atol=5 / DEFAULT_ROWS)
    # float64 input is hashed in float32
    np.testing.assert_array_equal(base, lsh_kernel_sums(X.astype(np.float64), seed=3))


def test_sketch_progress_bar_and_validation(capsys: pytest.CaptureFixture[str]) -> None:
    X = mixture_on_sphere(50, 2, seed=7)
    np.testing.assert_array_equal(
        lsh_kernel_sums(X, rows=8, chunk_size=16, progress=True), lsh_kernel_sums(X, rows=8, chunk_size=16)
    )
    assert "density sketch" in capsys.readouterr().out
    for bad in [
        {"rows": 0},
        {"buckets": -1},
        {"hashes_per_row": 1.5},
        {"chunk_size": 0},
        {"bandwidth": -1.0},
    ]:
        with pytest.raises(ConfigError, match=f"{next(iter(bad))}="):
            lsh_kernel_sums(X, **bad)
    with pytest.raises(ValueError, match="expected a 2-d array"):
        lsh_kernel_sums(X[0])
    Y = X.copy()
    Y[3, 5] = np.nan
    with pytest.raises(ValueError, match=r"X\[3, 5\]=nan"):
        lsh_kernel_sums(Y)


def test_default_bandwidth_is_the_median_pairwise_distance() -> None:
    X = mixture_on_sphere(200, 3, seed=8, dim=32)
    dist = np.sqrt(((X[:, None, :].astype(float) - X[None, :, :]) ** 2).sum(-1))[np.triu_indices(200, k=1)]
    assert default_bandwidth(X) == pytest.approx(np.median(dist), rel=1e-6)
    assert default_bandwidth(X, quantile=0.1) == pytest.approx(np.quantile(dist, 0.1), rel=1e-6)
    # a seeded sample of rows for large inputs
    assert default_bandwidth(X, sample=50) == default_bandwidth(X, sample=50)
    assert default_bandwidth(X, sample=50) == pytest.approx(np.median(dist), rel=0.1)
    assert default_bandwidth(X[:1]) == 1.0 and default_bandwidth(np.zeros((5, 3))) == 1.0
    with pytest.raises(ConfigError, match="quantile=0"):
        default_bandwidth(X, quantile=0.0)


# ----------------------------------------------------------------------------------------------------------
# Inverse propensity sampling


@pytest.mark.parametrize("power", [1.0, 2.0, 0.5])
def test_first_draw_frequencies_are_inverse_scores(power: float) -> None:
    scores = np.array([1.0, 2.0, 4.0, 8.0, 0.5, 3.0])
    rng = np.random.default_rng(0)
    trials = 30_000
    first = np.array([inverse_propensity_sample(scores, 1, rng, power=power)[0] for _ in range(trials)])
    expected = scores**-power / np.sum(scores**-power)
    assert stats.chisquare(np.bincount(first, minlength=6), expected * trials).pvalue > 1e-3


def test_ordered_pairs_follow_sequential_draws_without_replacement() -> None:
    """P(first = i, second = j) = w_i / W * w_j / (W - w_i): the exponential keys reproduce sequential
    draws without replacement."""
    scores = np.array([1.0, 2.0, 5.0, 0.25])
    wt = 1 / scores
    W = wt.sum()
    pairs = list(itertools.permutations(range(4), 2))
    expected = np.array([wt[i] / W * wt[j] / (W - wt[i]) for i, j in pairs])
    rng = np.random.default_rng(1)
    trials = 30_000
    index = {p: m for m, p in enumerate(pairs)}
    counts = np.zeros(len(pairs))
    for _ in range(trials):
        i, j = inverse_propensity_sample(scores, 2, rng)
        counts[index[(int(i), int(j))]] += 1
    assert stats.chisquare(counts, expected * trials).pvalue > 1e-3


def test_ips_flattens_a_dense_cluster_unlike_random_sampling() -> None:
    """One cluster holds 50% of 2,000 points and 50 clusters hold 1% each. Sampling 10% uniformly keeps about
    50% from the dense cluster; uniform over the 51 clusters would keep 2%. Inverse propensity sampling on
    the default sketch keeps about 4-5%; with a single hash per row (the flat kernel) about 40%."""
    X, label = one_dense_cluster(seed=9)
    k = 200
    scores = lsh_kernel_sums(X)
    uniform_share = 1 / 51
    ips = [np.mean(label[inverse_propensity_sample(scores, k, seed)] == 0) for seed in range(20)]
    rand = [
        np.mean(label[np.random.default_rng(seed).choice(len(X), k, replace=False)] == 0)
        for seed in range(20)
    ]
    assert np.mean(rand) == pytest.approx(0.5, abs=0.03)
    assert np.mean(ips) < 0.2 * np.mean(rand)
    assert abs(np.mean(ips) - uniform_share) < 0.05
    # the sparse clusters are covered: almost all of them appear in a sample of 200
    assert np.mean([len(set(label[inverse_propensity_sample(scores, k, s)]) - {0}) for s in range(5)]) > 45
    # the first-draw probability of the dense cluster under the exact kernel agrees
    exact = exact_kernel_sums(X, hashes_per_row=DEFAULT_HASHES_PER_ROW)
    assert np.sum(1 / exact[label == 0]) / np.sum(1 / exact) < 0.1
    flat = lsh_kernel_sums(X, hashes_per_row=1)
    flat_share = np.mean([np.mean(label[inverse_propensity_sample(flat, k, s)] == 0) for s in range(20)])
    assert flat_share > 0.3


def test_ips_distinct_deterministic_and_edge_cases() -> None:
    scores = np.random.default_rng(2).uniform(0.5, 50.0, 100)
    picks = inverse_propensity_sample(scores, 30, 7)
    assert picks.dtype == np.int64 and len(set(picks.tolist())) == 30
    np.testing.assert_array_equal(picks, inverse_propensity_sample(scores, 30, np.random.default_rng(7)))
    assert not np.array_equal(picks, inverse_propensity_sample(scores, 30, 8))
    # the first j of k draws are the j draws of the same seed
    np.testing.assert_array_equal(picks[:10], inverse_propensity_sample(scores, 10, 7))
    assert inverse_propensity_sample(scores, 0, 7).shape == (0,)
    everything = inverse_propensity_sample(scores, 100, 7)
    np.testing.assert_array_equal(np.sort(everything), np.arange(100))
    np.testing.assert_array_equal(everything[:30], picks)
    assert inverse_propensity_sample(np.zeros(0) + 1.0, 0, 0).shape == (0,)
    # extreme scores neither underflow nor overflow
    assert inverse_propensity_sample(np.array([1e-300, 1e300]), 1, 0).tolist() == [0]
    assert inverse_propensity_sample(np.ones(5), 5, 0, power=0.0).shape == (5,)


@pytest.mark.parametrize(
    ("scores", "k", "power", "error", "match"),
    [
        ([1.0, 2.0], 3, 1.0, ConfigError, "k=3"),
        ([1.0, 2.0], -1, 1.0, ConfigError, "k=-1"),
        ([1.0, 2.0], 1.5, 1.0, ConfigError, "k=1.5"),
        ([1.0, 2.0], True, 1.0, ConfigError, "k=True"),
        ([1.0, 0.0], 1, 1.0, ValueError, r"scores\[1\]=0.0"),
        ([1.0, -2.0], 1, 1.0, ValueError, r"scores\[1\]=-2.0"),
        ([np.nan, 1.0], 1, 1.0, ValueError, r"scores\[0\]=nan"),
        ([1.0, np.inf], 1, 1.0, ValueError, r"scores\[1\]=inf"),
        ([[1.0, 2.0]], 1, 1.0, ValueError, "1-d"),
        ([1.0, 2.0], 1, np.inf, ConfigError, "power=inf"),
    ],
)
def test_ips_validation(scores, k, power, error, match) -> None:
    with pytest.raises(error, match=match):
        inverse_propensity_sample(np.asarray(scores), k, 0, power=power)


def test_density_sample_end_to_end() -> None:
    X, label = one_dense_cluster(seed=10)
    result = density_sample(X, 200, seed=1)
    assert isinstance(result, DensityResult) and len(result) == 200
    assert len(set(result.indices.tolist())) == 200
    assert result.scores.shape == (len(X),)
    assert (result.rows, result.buckets, result.hashes_per_row) == (DEFAULT_ROWS, DEFAULT_BUCKETS, 8)
    assert result.bandwidth == pytest.approx(default_bandwidth(X))
    np.testing.assert_array_equal(result.indices, density_sample(X, 200, seed=1).indices)
    assert np.mean(label[result.indices] == 0) < 0.1
    assert len(density_sample(X, 0)) == 0
    with pytest.raises(ConfigError, match="k=2001"):
        density_sample(X, 2001)


def test_default_bandwidth_samples_before_converting_to_float64():
    """The bandwidth of float32 embeddings is the float64 computation's, to the bit, without a float64
    copy of the whole pool (3 GB at 10^6 x 384): only the sampled rows are converted."""
    import tracemalloc

    from p3bench.algorithms.density import default_bandwidth

    X = np.random.default_rng(3).standard_normal((200_000, 64)).astype(np.float32)
    tracemalloc.start()
    try:
        w = default_bandwidth(X, seed=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert w == default_bandwidth(X.astype(np.float64), seed=1)
    # the sample's pairwise distances take about 20 MB whatever the pool; a float64 copy would be 102 MB
    assert peak < X.size * 8 / 2
