"""Density sketch: ``p3bench.algorithms.density.lsh_kernel_sums`` at scale, and next to scikit-learn's
``KernelDensity`` on a pool small enough for it.

1. Speed: the two-pass RACE sketch on ``--n`` clustered unit embeddings (``--dim``, float32; a Gaussian
   mixture on the sphere with Zipf-sized clusters, generated in chunks). Prints the time, the sketch size,
   the threads and the peak of the memory numpy allocated during the call (``tracemalloc``, not counting the
   embeddings themselves). Then, at ``--spearman-sample`` random points, the exact sums over the whole
   pool (``exact_sums_at``) and their Spearman rank correlation with the sketch's scores there. Target:
   1,000,000 x 384 in under 60 s on 2 cores, Spearman >= 0.9.
2. Quality: on ``--kde-n`` points from the same kind of mixture, the sketch's scores, the exact sums of
   the kernel it estimates (``p(d)^K``, by ``exact_kernel_sums``) and scikit-learn's Gaussian
   ``KernelDensity.score_samples`` (log-density; its time is reported too). The Gaussian bandwidth is the
   one closest to ``p(d)^K`` on the pool's distances (least squares of ``log p(d)^K`` against ``d^2`` between
   the 1% and 99% distance quantiles), unless ``--kde-bandwidth`` is given. Prints the Spearman rank
   correlations between the three.

    python benchmarks/density_sketch.py --n 1000000 --dim 384 --threads 2
    python benchmarks/density_sketch.py --n 200000 --rows 256 --hashes-per-row 4 --kde-n 5000

Ends with a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
from scipy.stats import spearmanr
from threadpoolctl import threadpool_limits

from p3bench.algorithms.density import (
    CACHE_LIMIT_BYTES,
    DEFAULT_BUCKETS,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_HASHES_PER_ROW,
    DEFAULT_ROWS,
    default_bandwidth,
    exact_kernel_sums,
    lsh_kernel_sums,
    pstable_collision_probability,
)


def clustered_embeddings(n: int, dim: int, clusters: int, seed: int, chunk: int = 65536) -> np.ndarray:
    """``n`` unit float32 vectors: cluster centres uniform on the sphere, Zipf cluster sizes, and per-cluster
    spreads (norm of the Gaussian noise before normalisation) uniform in [0.3, 1.0]."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, clusters + 1)
    spreads = rng.uniform(0.3, 1.0, clusters).astype(np.float32) / np.float32(math.sqrt(dim))
    X = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        label = rng.choice(clusters, size=m, p=weights / weights.sum())
        block = rng.standard_normal((m, dim), dtype=np.float32)
        block *= spreads[label, None]
        block += centres[label]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        X[start : start + m] = block
    return X


def exact_sums_at(
    X: np.ndarray, queries: np.ndarray, bandwidth: float, hashes_per_row: int, block: int = 32768
) -> np.ndarray:
    """The exact sums ``sum_x p(||x - y||)^K`` over every row ``x`` of ``X`` for the rows ``y = X[queries]``
    (what :func:`lsh_kernel_sums` estimates there). Squared distances come from float32 products; the
    kernel is read off a table of ``p(sqrt(s))^K`` on 2^18 evenly spaced squared distances ``s`` (linear
    interpolation: a relative error below 1e-6 away from ``s = 0``, where only the point itself lies, set
    to 1 exactly); sums in float64."""
    Q = np.ascontiguousarray(X[queries], dtype=np.float32)
    q_sq = np.einsum("ij,ij->i", Q, Q)
    x_sq = np.einsum("ij,ij->i", X, X)
    top = float(4.0 * max(q_sq.max(), x_sq.max()) * 1.001)
    grid = np.linspace(0.0, top, 2**18)
    table = pstable_collision_probability(np.sqrt(grid), bandwidth) ** hashes_per_row
    out = np.zeros(queries.size)
    for start in range(0, X.shape[0], block):
        B = X[start : start + block]
        d2 = Q @ B.T
        d2 *= -2.0
        d2 += q_sq[:, None]
        d2 += x_sq[None, start : start + B.shape[0]]
        np.maximum(d2, 0.0, out=d2)
        values = np.interp(d2, grid, table)
        rows = np.flatnonzero((queries >= start) & (queries < start + B.shape[0]))
        values[rows, queries[rows] - start] = 1.0  # the point itself: p(0) = 1, exactly
        out += values.sum(axis=1)
    return out


def matching_gaussian_bandwidth(X: np.ndarray, w: float, hashes_per_row: int, seed: int) -> float:
    """The Gaussian bandwidth ``h`` whose ``-d^2 / (2 h^2)`` best fits ``log p(d)^K`` (least squares in
    ``d^2``, slope only) over distances between the 1% and 99% quantiles of a sample of pairs."""
    lo, hi = (default_bandwidth(X, quantile=q, seed=seed) for q in (0.01, 0.99))
    d = np.linspace(lo, hi, 200)
    y = hashes_per_row * np.log(pstable_collision_probability(d, w))
    x = d**2
    slope = np.polyfit(x, y, 1)[0]
    return float(math.sqrt(-1.0 / (2.0 * slope)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000, help="pool size for the speed run")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=1000, help="mixture components")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--buckets", type=int, default=DEFAULT_BUCKETS)
    parser.add_argument("--hashes-per-row", type=int, default=DEFAULT_HASHES_PER_ROW)
    parser.add_argument("--bandwidth", type=float, default=None, help="default: median pairwise distance")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument(
        "--no-cache", action="store_true", help="always hash again in pass 2 (default: cache ids up to 1 GiB)"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="BLAS threads")
    parser.add_argument("--kde-n", type=int, default=10_000, help="pool size for the comparison (0: skip)")
    parser.add_argument(
        "--spearman-sample",
        type=int,
        default=1000,
        help="speed run: points at which the exact sums over the whole pool are computed (0: skip)",
    )
    parser.add_argument("--kde-bandwidth", type=float, default=None, help="Gaussian h for scikit-learn")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    summary = measure(
        n=args.n,
        dim=args.dim,
        clusters=args.clusters,
        rows=args.rows,
        buckets=args.buckets,
        hashes_per_row=args.hashes_per_row,
        bandwidth=args.bandwidth,
        chunk_size=args.chunk_size,
        no_cache=args.no_cache,
        threads=args.threads,
        kde_n=args.kde_n,
        spearman_sample=args.spearman_sample,
        kde_bandwidth=args.kde_bandwidth,
        seed=args.seed,
    )
    print(json.dumps(summary))


def measure(
    *,
    n: int = 1_000_000,
    dim: int = 384,
    clusters: int = 1000,
    rows: int = DEFAULT_ROWS,
    buckets: int = DEFAULT_BUCKETS,
    hashes_per_row: int = DEFAULT_HASHES_PER_ROW,
    bandwidth: float | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    no_cache: bool = False,
    threads: int | None = None,
    kde_n: int = 10_000,
    spearman_sample: int = 1000,
    kde_bandwidth: float | None = None,
    seed: int = 0,
    log: Callable[[str], object] = print,
) -> dict[str, object]:
    """The speed run on ``n`` points (skipped at 0) and the comparison on ``kde_n`` points (skipped at 0);
    returns the summary the CLI prints as JSON, ``log`` gets the human-readable lines."""
    if threads is None:
        threads = os.cpu_count() or 1
    summary: dict[str, object] = {
        "n": n,
        "dim": dim,
        "rows": rows,
        "buckets": buckets,
        "hashes_per_row": hashes_per_row,
        "threads": threads,
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    log(
        f"sketch R={rows} x B={buckets}, K={hashes_per_row} hashes per row, "
        f"threads={threads} (cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f})"
    )

    with threadpool_limits(limits=threads):
        if n > 0:
            start = time.perf_counter()
            X = clustered_embeddings(n, dim, clusters, seed)
            generated = time.perf_counter() - start
            w = bandwidth if bandwidth is not None else default_bandwidth(X)
            tracemalloc.start()
            start = time.perf_counter()
            scores = lsh_kernel_sums(
                X,
                rows=rows,
                buckets=buckets,
                bandwidth=w,
                hashes_per_row=hashes_per_row,
                seed=seed,
                chunk_size=chunk_size,
                cache_buckets=False if no_cache else None,
            )
            elapsed = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            cached = not no_cache and n * rows * (2 if buckets <= 2**16 else 4) <= (CACHE_LIMIT_BYTES)
            ids = "cached" if cached else "recomputed"
            log(f"data:        {n:,} x {dim} float32 in {generated:.1f} s, bandwidth {w:.4f}")
            log(
                f"sketch:      {elapsed:8.2f} s  ({n / elapsed:,.0f} points/s, peak {peak / 2**20:,.0f} "
                f"MiB beside the embeddings, bucket ids {ids})"
            )
            log(
                f"scores:      min {scores.min():.1f}, median {np.median(scores):.1f}, max {scores.max():.1f}"
            )
            summary.update(
                bandwidth=round(w, 4),
                sketch_s=round(elapsed, 2),
                peak_mib=round(peak / 2**20),
                cached=cached,
            )
            if spearman_sample > 0:
                start = time.perf_counter()
                sample = np.sort(
                    np.random.default_rng(seed + 2).choice(n, min(spearman_sample, n), replace=False)
                )
                exact = exact_sums_at(X, sample, w, hashes_per_row)
                rho = float(spearmanr(scores[sample], exact)[0])
                log(
                    f"check:       Spearman {rho:.4f} between the sketch and the exact sums over all {n:,} points "
                    f"at {sample.size:,} sampled points ({time.perf_counter() - start:.1f} s)"
                )
                summary.update(spearman_sample=int(sample.size), spearman_sample_exact=round(rho, 4))
            del X, scores

        if kde_n > 0:
            from sklearn.neighbors import KernelDensity

            Y = clustered_embeddings(kde_n, dim, max(2, clusters // 50), seed + 1)
            w = bandwidth if bandwidth is not None else default_bandwidth(Y)
            h = kde_bandwidth or matching_gaussian_bandwidth(Y, w, hashes_per_row, seed)
            start = time.perf_counter()
            sketch = lsh_kernel_sums(
                Y,
                rows=rows,
                buckets=buckets,
                bandwidth=w,
                hashes_per_row=hashes_per_row,
                seed=seed,
            )
            t_sketch = time.perf_counter() - start
            start = time.perf_counter()
            exact = exact_kernel_sums(Y, kernel="pstable", bandwidth=w, hashes_per_row=hashes_per_row)
            t_exact = time.perf_counter() - start
            start = time.perf_counter()
            log_density = KernelDensity(kernel="gaussian", bandwidth=h).fit(Y).score_samples(Y)
            t_sklearn = time.perf_counter() - start
            start = time.perf_counter()
            exact_gauss = exact_kernel_sums(Y, kernel="gaussian", bandwidth=h)
            t_exact_gauss = time.perf_counter() - start
            rho_sketch_exact = spearmanr(sketch, exact)[0]
            rho_sketch_sk = spearmanr(sketch, log_density)[0]
            rho_exact_sk = spearmanr(exact, log_density)[0]
            rho_gauss_sk = spearmanr(exact_gauss, log_density)[0]
            log(f"\ncomparison pool: {kde_n:,} x {dim}, p-stable w={w:.4f}, Gaussian h={h:.4f}")
            log(f"  lsh_kernel_sums             {t_sketch:8.2f} s")
            log(f"  exact p-stable sums         {t_exact:8.2f} s")
            log(f"  sklearn KernelDensity       {t_sklearn:8.2f} s  (gaussian, default tree and tolerances)")
            log(f"  exact Gaussian sums         {t_exact_gauss:8.2f} s")
            log("  Spearman rank correlation")
            log(f"    sketch vs exact p-stable  {rho_sketch_exact:.4f}")
            log(f"    sketch vs sklearn         {rho_sketch_sk:.4f}")
            log(f"    exact p-stable vs sklearn {rho_exact_sk:.4f}")
            log(f"    exact Gaussian vs sklearn {rho_gauss_sk:.4f}  (same kernel: a check)")
            summary.update(
                kde_n=kde_n,
                kde_bandwidth=round(h, 4),
                kde_sketch_s=round(t_sketch, 2),
                kde_exact_s=round(t_exact, 2),
                kde_sklearn_s=round(t_sklearn, 2),
                spearman_sketch_exact=round(float(rho_sketch_exact), 4),
                spearman_sketch_sklearn=round(float(rho_sketch_sk), 4),
                spearman_exact_sklearn=round(float(rho_exact_sk), 4),
                spearman_gaussian_sklearn=round(float(rho_gauss_sk), 4),
            )
    return summary


if __name__ == "__main__":
    main()
