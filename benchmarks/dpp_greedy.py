"""DPP greedy MAP: ``p3bench.algorithms.dpp.dpp_select`` against a straightforward NumPy implementation of
the same fast greedy (Chen, Zhang & Zhou, arXiv 1709.05135) on the explicit ``N x N`` kernel.

Both run on the same data in the same process. ``--kernel cosine`` (default): random unit features
``(N, d)``, quality uniform in (0.5, 1], ``L = diag(q) (F F^T + ridge I) diag(q)``. ``--kernel rbf_blocked``:
clustered unit features (a Gaussian mixture on the sphere), the same quality, the RBF kernel with
``dpp_select``'s defaults for it (bandwidth 2 x the median distance, ridge 1e-4), picked by the blocked
greedy in float32 (what ``dpp_select`` runs) and in float64. Prints the timings, the speedup and whether
the selections are identical (for float32: how many picks agree and the log-det of each pick on the
explicit float64 kernel), then a one-line JSON summary.

    python benchmarks/dpp_greedy.py --n 20000 --k 2000 --d 384 --seed 0
    python benchmarks/dpp_greedy.py --kernel rbf_blocked --n 10000 --k 1000
    python benchmarks/dpp_greedy.py --kernel rbf_blocked --n 7500 --k 5000 --repeat 1
    python benchmarks/dpp_greedy.py --kernel rbf_blocked --n 10000 --k 1000 --conditioned --no-reference

The reference needs ``8 N^2`` bytes for the kernel (3.2 GB at N = 20,000) plus ``8 N k`` for the factor;
the RBF kernel is built in row chunks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

from p3bench.algorithms.dpp import DEFAULT_RIDGE, dpp_select, log_det
from p3bench.algorithms.dpp_kernels import RBFColumns, rbf_blocked_bandwidth, rbf_blocked_greedy


def reference_greedy(kernel: np.ndarray, k: int, eps: float = 1e-10) -> list[int]:
    """The fast greedy MAP as commonly written: explicit kernel, the Cholesky rows of every item kept in a
    ``k x N`` array, one ``O(N t)`` matrix-vector product per pick."""
    n = kernel.shape[0]
    cis = np.zeros((k, n))
    di2s = np.diag(kernel).copy()
    selected: list[int] = []
    j = int(np.argmax(di2s))
    while di2s[j] >= eps:
        selected.append(j)
        if len(selected) == k:
            break
        t = len(selected) - 1
        eis = (kernel[j, :] - cis[:t, j] @ cis[:t, :]) / math.sqrt(di2s[j])
        cis[t, :] = eis
        di2s -= eis**2
        di2s[j] = -np.inf
        j = int(np.argmax(di2s))
    return selected


def clustered_unit(n: int, d: int, rng: np.random.Generator, clusters: int = 50) -> np.ndarray:
    """Unit vectors around ``clusters`` random centres with spreads uniform in [0.3, 1] (a kernel with
    structure: random Gaussian vectors in high dimension are all about equally far apart)."""
    centres = rng.standard_normal((clusters, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    label = rng.integers(0, clusters, n)
    spread = rng.uniform(0.3, 1.0, clusters)[label, None] / math.sqrt(d)
    X = centres[label] + spread * rng.standard_normal((n, d))
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def explicit_rbf(features: np.ndarray, quality: np.ndarray, ridge: float, bandwidth: float) -> np.ndarray:
    """The rbf_blocked kernel as an explicit float64 matrix, built 1,000 rows at a time."""
    n = features.shape[0]
    columns = RBFColumns(features, quality, ridge=ridge, bandwidth=bandwidth, dtype=np.float64)
    kernel = np.empty((n, n))
    everything = np.arange(n)
    for start in range(0, n, 1000):
        rows = everything[start : start + 1000]
        kernel[rows] = columns(rows, everything)
    return kernel


def compare(reference: list[int], picks: list[int]) -> tuple[bool, int, int, int | None]:
    """Identical, picks agreeing by position, picks in common, the first position that differs."""
    positions = sum(a == b for a, b in zip(reference, picks, strict=False))
    common = len(set(reference) & set(picks))
    first = next((i for i, (a, b) in enumerate(zip(reference, picks, strict=False)) if a != b), None)
    return reference == picks, positions, common, first


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kernel", choices=("cosine", "rbf_blocked"), default="cosine")
    parser.add_argument("--n", type=int, default=20000, help="candidates")
    parser.add_argument("--k", type=int, default=2000, help="budget")
    parser.add_argument("--d", type=int, default=384, help="feature dimension")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ridge", type=float, default=None, help="default: dpp_select's for the kernel")
    parser.add_argument("--repeat", type=int, default=3, help="dpp_select runs (the median is reported)")
    parser.add_argument("--no-reference", action="store_true", help="skip the explicit-kernel reference")
    parser.add_argument(
        "--conditioned",
        action="store_true",
        help="rbf_blocked: also time a second round conditioned on the first round's pick (P3's "
        "dpp.condition_on=previous: k preselected rows, most of them copies of candidates)",
    )
    args = parser.parse_args()
    summary = measure(
        kernel=args.kernel,
        n=args.n,
        k=args.k,
        d=args.d,
        seed=args.seed,
        ridge=args.ridge,
        repeat=args.repeat,
        reference=not args.no_reference,
        conditioned=args.conditioned,
    )
    print(json.dumps(summary))


def measure(
    *,
    kernel: str = "cosine",
    n: int = 20000,
    k: int = 2000,
    d: int = 384,
    seed: int = 0,
    ridge: float | None = None,
    repeat: int = 3,
    reference: bool = True,
    conditioned: bool = False,
    log: Callable[[str], object] = print,
) -> dict[str, object]:
    """Time ``dpp_select`` (median of ``repeat`` runs) and, with ``reference``, the plain greedy on the
    explicit kernel on the same data; returns the summary (what the CLI prints as JSON), ``log`` gets the
    human-readable lines. ``kernel="rbf_blocked"`` also times the blocked greedy in float64 and, with
    ``conditioned``, a second round conditioned on the first."""
    ridge = DEFAULT_RIDGE[kernel] if ridge is None else ridge
    if kernel == "rbf_blocked":
        return _measure_rbf(n, k, d, seed, ridge, repeat, reference, conditioned, log)
    if kernel != "cosine":
        raise ValueError(f"kernel={kernel!r}: expected cosine or rbf_blocked")
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n, d))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    quality = 1.0 - rng.uniform(0.0, 0.5, n)  # (0.5, 1]
    log(f"N={n} k={k} d={d} seed={seed} ridge={ridge} cpus={os.cpu_count()}")

    times = []
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        result = dpp_select(features, k, quality=quality, kernel="cosine", ridge=ridge)
        times.append(time.perf_counter() - start)
    ours = statistics.median(times)
    log(f"dpp_select:  {ours:8.2f} s  (median of {len(times)}: {', '.join(f'{t:.2f}' for t in times)})")
    summary: dict[str, object] = {
        "kernel": "cosine",
        "n": n,
        "k": k,
        "d": d,
        "seed": seed,
        "ridge": ridge,
        "cpus": os.cpu_count(),
        "dpp_select_s": round(ours, 3),
        "picked": len(result),
    }

    if reference:
        start = time.perf_counter()
        b = features * quality[:, None]
        explicit = np.empty((n, n))
        for row in range(0, n, 4096):  # in row blocks: one 20,000 x 20,000 float64 X @ X.T crashed OpenBLAS
            np.matmul(b[row : row + 4096], b.T, out=explicit[row : row + 4096])
        explicit[np.diag_indices(n)] += ridge * quality**2
        built = time.perf_counter()
        picks = reference_greedy(explicit, k)
        end = time.perf_counter()
        del explicit
        ref_total, ref_kernel, ref_loop = end - start, built - start, end - built
        same, positions, common, first_diff = compare(picks, result.indices.tolist())
        log(f"reference:   {ref_total:8.2f} s  (kernel {ref_kernel:.2f} s + greedy loop {ref_loop:.2f} s)")
        log(f"speedup:     {ref_total / ours:8.1f} x  (greedy loop alone: {ref_loop / ours:.1f} x)")
        if same:
            log(f"selection:   identical ({len(picks)} picks, same order)")
        else:
            log(
                f"selection:   DIFFERENT: {positions}/{len(picks)} picks agree by position, "
                f"{common} in common, first difference at pick {first_diff}"
            )
        summary.update(
            reference_s=round(ref_total, 3),
            reference_kernel_s=round(ref_kernel, 3),
            reference_loop_s=round(ref_loop, 3),
            speedup=round(ref_total / ours, 2),
            speedup_loop_only=round(ref_loop / ours, 2),
            same_selection=same,
            agree_positions=positions,
            agree_set=common,
        )
    return summary


def _measure_rbf(
    n: int,
    k: int,
    d: int,
    seed: int,
    ridge: float,
    repeat: int,
    reference: bool,
    conditioned: bool,
    log: Callable[[str], object],
) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    features = clustered_unit(n, d, rng)
    quality = 1.0 - rng.uniform(0.0, 0.5, n)  # (0.5, 1]
    bandwidth = rbf_blocked_bandwidth(features)
    log(
        f"kernel=rbf_blocked N={n} k={k} d={d} seed={seed} ridge={ridge} "
        f"bandwidth={bandwidth:.4f} cpus={os.cpu_count()}"
    )
    times = []
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        result = dpp_select(features, k, quality=quality, kernel="rbf_blocked", ridge=ridge)
        times.append(time.perf_counter() - start)
    ours = statistics.median(times)
    log(
        f"dpp_select (float32): {ours:8.2f} s  (median of {len(times)}: {', '.join(f'{t:.2f}' for t in times)})"
    )
    start = time.perf_counter()
    none = features[:0]
    double = rbf_blocked_greedy(
        features,
        quality,
        k,
        ridge=ridge,
        bandwidth=bandwidth,
        P=none,
        qp=quality[:0],
        eps=1e-10,
        dtype=np.float64,
    )
    ours64 = time.perf_counter() - start
    log(f"blocked (float64):    {ours64:8.2f} s")
    if conditioned:
        start = time.perf_counter()
        dpp_select(
            features,
            k,
            quality=quality,
            kernel="rbf_blocked",
            ridge=ridge,
            preselected_features=features[result.indices],
            preselected_quality=quality[result.indices],
        )
        conditioned_s = time.perf_counter() - start
        log(f"conditioned (float32): {conditioned_s:7.2f} s  (on the {len(result)} rows of the first pick)")
    summary: dict[str, object] = {
        "kernel": "rbf_blocked",
        "n": n,
        "k": k,
        "d": d,
        "seed": seed,
        "ridge": ridge,
        "cpus": os.cpu_count(),
        "dpp_select_s": round(ours, 3),
        "float64_s": round(ours64, 3),
        "picked": len(result),
    }
    if conditioned:
        summary["conditioned_s"] = round(conditioned_s, 3)
    if reference:
        start = time.perf_counter()
        kernel = explicit_rbf(features, quality, ridge, bandwidth)
        built = time.perf_counter()
        picks_ref = reference_greedy(kernel, k)
        end = time.perf_counter()
        ref_total, ref_kernel, ref_loop = end - start, built - start, end - built
        log(
            f"reference:            {ref_total:8.2f} s  (kernel {ref_kernel:.2f} s + greedy loop {ref_loop:.2f} s)"
        )
        log(f"speedup:              {ref_total / ours:8.1f} x float32, {ref_total / ours64:.1f} x float64")
        same64, _, common64, first64 = compare(picks_ref, double.indices.tolist())
        same32, positions, common, first = compare(picks_ref, result.indices.tolist())
        log(
            f"float64 selection:    {'identical' if same64 else f'DIFFERENT from pick {first64}, {common64} in common'}"
        )
        ld_ref, ld32 = log_det(kernel, picks_ref), log_det(kernel, result.indices)
        log(
            f"float32 selection:    {'identical' if same32 else 'differs'}: {positions}/{len(picks_ref)} picks agree by "
            f"position (first difference at pick {first}), {common} in common; log-det on the explicit kernel "
            f"{ld32:.4f} vs the reference's {ld_ref:.4f}"
        )
        del kernel
        summary.update(
            reference_s=round(ref_total, 3),
            reference_kernel_s=round(ref_kernel, 3),
            reference_loop_s=round(ref_loop, 3),
            speedup=round(ref_total / ours, 2),
            speedup_float64=round(ref_total / ours64, 2),
            same_selection_float64=same64,
            same_selection_float32=same32,
            agree_positions_float32=positions,
            agree_set_float32=common,
            logdet_reference=round(ld_ref, 4),
            logdet_float32=round(ld32, 4),
        )
    return summary


if __name__ == "__main__":
    main()
