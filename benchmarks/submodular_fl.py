"""Facility location, lazy greedy: ``p3bench.algorithms.submodular.maximize`` against submodlib and apricot.

The three run in one process on the same dense float32 kernel ``K = (cos + 1) / 2`` of unit embeddings
(in [0, 1]; DELIFT-SE's kernel), budget ``--fraction`` of ``n`` (30% as DELIFT), lazy greedy, no early
stop, each after a warm-up run on a 200 x 200 kernel (imports, apricot's numba compilation), then
``--repeat`` rounds of the three in turn (medians reported):

- ours: ``maximize("fl", K, budget, optimizer="lazy")`` (its input checks included);
- submodlib: ``FacilityLocationFunction(n, mode="dense", sijs=K, separate_rep=False).maximize(budget,
  optimizer="LazyGreedy", stopIfZeroGain=False, stopIfNegativeGain=False)`` (DELIFT's call; building
  the function, which copies the kernel into C++, is in the total and also shown alone);
- apricot: ``FacilityLocationSelection(budget, metric="precomputed", optimizer="lazy").fit(K.T)``
  (apricot reads a row as a candidate, hence ``K.T``; it copies the kernel to float64).

``K`` is symmetric; ``--asymmetric`` multiplies column ``j`` by a random ``w_j`` in [0.5, 1] (a kernel
like DELIFT's utility kernel, which is not symmetric: our greedy then makes a transposed float32 copy, and
the three agreeing checks that they read rows and columns the same way).

Prints each one's seconds, its ratio to ours, whether its picks equal ours (in order), how many of the
picks it shares with ours, where the first difference is (and whether the two picks there tie exactly:
equal gains after the common prefix) and ``f`` of its selection, then a JSON line. ``--data clustered``
(default): unit vectors around 50 random centres in ``--d`` dimensions; ``--data gaussian``: plain
Gaussian vectors (similarities all close to 0.5, a nearly flat kernel); ``--data alpaca``: MiniLM
embeddings of the local Alpaca and Dolly instructions (the first ``n``; embedded once into
``--cache-dir``).

    OMP_NUM_THREADS=1 python benchmarks/submodular_fl.py                 # n = 10,000, budget 3,000
    OMP_NUM_THREADS=1 python benchmarks/submodular_fl.py --asymmetric
    OMP_NUM_THREADS=1 python benchmarks/submodular_fl.py --quick         # n = 2,000, budget 600
    OMP_NUM_THREADS=1 python benchmarks/submodular_fl.py --data alpaca --n 10000

Memory at n = 10,000: the kernel 0.4 GB; ours at most 0.4 GB more (the transposed copy, asymmetric
only); submodlib's copy 0.4 GB; apricot's float64 copy 0.8 GB (each freed before the next one runs).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from p3bench.algorithms import submodular_gains
from p3bench.algorithms.submodular import facility_location_value, maximize

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
EMBEDDING_CACHE = Path.home() / ".cache" / "p3bench" / "embeddings"


def clustered_unit(n: int, d: int, rng: np.random.Generator, clusters: int = 50) -> np.ndarray:
    """Unit vectors around ``clusters`` random centres with spreads uniform in [0.3, 1]."""
    centres = rng.standard_normal((clusters, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    label = rng.integers(0, clusters, n)
    spread = rng.uniform(0.3, 1.0, clusters)[label, None] / math.sqrt(d)
    x = centres[label] + spread * rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def instruction_embeddings(n: int, cache_dir: Path) -> np.ndarray:
    """MiniLM embeddings of the first ``n`` of Alpaca then Dolly (instruction, input and output joined)."""
    from p3bench.embeddings import build_embedder, cached_embeddings

    texts: list[str] = []
    for path in (DATA / "alpaca" / "random_9k.json", DATA / "dolly" / "dolly_3k.json"):
        for record in json.loads(path.read_text()):
            parts = (
                record.get("instruction"),
                record.get("input") or record.get("context"),
                record.get("output") or record.get("response"),
            )
            texts.append("\n".join(p for p in parts if p))
    if len(texts) < n:
        raise SystemExit(f"--n {n}: only {len(texts)} instruction records in {DATA}")
    return cached_embeddings(build_embedder("minilm", progress=True), texts[:n], cache_dir)


def cosine_kernel(x: np.ndarray) -> np.ndarray:
    """``(x x^T + 1) / 2`` of row-normalised ``x`` in float32, clipped to [0, 1]."""
    x = np.asarray(x, dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    kernel = x @ x.T
    kernel += 1.0
    kernel *= 0.5
    np.clip(kernel, 0.0, 1.0, out=kernel)
    return kernel


def run_ours(kernel: np.ndarray, budget: int) -> tuple[list[int], float, int]:
    start = time.perf_counter()
    result = maximize("fl", kernel, budget, optimizer="lazy")
    end = time.perf_counter()
    return result.indices.tolist(), end - start, result.n_evaluations


def run_submodlib(kernel: np.ndarray, budget: int) -> tuple[list[int], float, float]:
    from submodlib import FacilityLocationFunction

    start = time.perf_counter()
    function = FacilityLocationFunction(kernel.shape[0], mode="dense", sijs=kernel, separate_rep=False)
    built = time.perf_counter()
    picks = function.maximize(
        budget, optimizer="LazyGreedy", stopIfZeroGain=False, stopIfNegativeGain=False, show_progress=False
    )
    end = time.perf_counter()
    del function
    return [int(i) for i, _ in picks], built - start, end - built


def run_apricot(kernel: np.ndarray, budget: int) -> tuple[list[int], float]:
    """apricot reads row ``j`` of a precomputed kernel as candidate ``j``: it gets ``kernel.T``."""
    from apricot import FacilityLocationSelection

    start = time.perf_counter()
    selector = FacilityLocationSelection(budget, metric="precomputed", optimizer="lazy", verbose=False)
    selector.fit(kernel.T)
    end = time.perf_counter()
    return [int(i) for i in selector.ranking], end - start


def gains_after(kernel: np.ndarray, prefix: list[int], candidates: list[int]) -> list[float]:
    """The facility-location gains of ``candidates`` after picking ``prefix`` (float32 terms, float64 sums)."""
    cover = np.zeros(kernel.shape[0], dtype=np.float32)
    if prefix:
        for start in range(0, kernel.shape[0], 256):
            cover[start : start + 256] = kernel[start : start + 256][:, prefix].max(axis=1)
    return [float(np.maximum(kernel[:, j] - cover, 0.0).astype(np.float64).sum()) for j in candidates]


def live_share(kernel: np.ndarray, picks: list[int], counts: tuple[int, ...]) -> dict[int, float]:
    """The share of the kernel's entries above their row's coverage after the first ``t`` picks, for each
    ``t`` in ``counts``: the entries that can still raise a row's coverage, all the pruned greedy keeps."""
    shares = {}
    for t in counts:
        if t > len(picks):
            continue
        live = 0
        for start in range(0, kernel.shape[0], 256):
            block = kernel[start : start + 256]
            live += int(np.count_nonzero(block > block[:, picks[:t]].max(axis=1, keepdims=True)))
        shares[t] = live / kernel.size
    return shares


def compare(kernel: np.ndarray, ours: list[int], theirs: list[int]) -> dict[str, object]:
    """Same picks in order, picks in common, the first position that differs, whether the two picks there
    have exactly equal gains after the common prefix (a tie broken the other way) and our pick's gain."""
    first = next((t for t, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None)
    tie = gain = None
    if first is not None:
        gain, their_gain = gains_after(kernel, ours[:first], [ours[first], theirs[first]])
        tie = gain == their_gain
    return {
        "same": ours == theirs,
        "common": len(set(ours) & set(theirs)),
        "first_difference": first,
        "tie": tie,
        "gain_there": gain,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10000, help="pool size (kernel n x n)")
    parser.add_argument("--quick", action="store_true", help="n = 2,000 (overrides --n)")
    parser.add_argument("--fraction", type=float, default=0.3, help="budget as a fraction of n")
    parser.add_argument("--data", choices=("clustered", "gaussian", "alpaca"), default="clustered")
    parser.add_argument("--d", type=int, default=384, help="embedding dimension (clustered, gaussian)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=EMBEDDING_CACHE)
    parser.add_argument(
        "--asymmetric", action="store_true", help="scale column j by a random w_j in [0.5, 1]"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (interleaved; medians reported)")
    parser.add_argument("--no-submodlib", action="store_true")
    parser.add_argument("--no-apricot", action="store_true")
    parser.add_argument(
        "--prune-share",
        type=float,
        default=None,
        help=f"ours: prune the dense kernel once less than this share of its entries count "
        f"(default {submodular_gains.PRUNE_SHARE}; 0 never prunes it)",
    )
    parser.add_argument(
        "--live-share",
        action="store_true",
        help="print the share of entries that still count after 1, 10, 100, 1000 picks",
    )
    args = parser.parse_args()
    summary = measure(
        n=2000 if args.quick else args.n,
        fraction=args.fraction,
        data=args.data,
        d=args.d,
        seed=args.seed,
        cache_dir=args.cache_dir,
        asymmetric=args.asymmetric,
        repeat=args.repeat,
        submodlib=not args.no_submodlib,
        apricot=not args.no_apricot,
        prune_share=args.prune_share,
        report_live_share=args.live_share,
    )
    print(json.dumps(summary))


def measure(
    *,
    n: int = 10000,
    fraction: float = 0.3,
    data: str = "clustered",
    d: int = 384,
    seed: int = 0,
    cache_dir: Path = EMBEDDING_CACHE,
    asymmetric: bool = False,
    repeat: int = 3,
    submodlib: bool = True,
    apricot: bool = True,
    prune_share: float | None = None,
    report_live_share: bool = False,
    log: Callable[[str], object] = print,
) -> dict[str, object]:
    """Ours, submodlib and apricot on the same kernel, ``repeat`` interleaved rounds; returns the summary
    the CLI prints as JSON (``ours``, ``submodlib``, ``apricot``: seconds, ratio to ours, the comparison
    of picks, the objective value), ``log`` gets the table."""
    budget = int(fraction * n)

    if prune_share is not None:
        submodular_gains.PRUNE_SHARE = prune_share
    rng = np.random.default_rng(seed)
    if data == "alpaca":
        embeddings = instruction_embeddings(n, cache_dir)
    elif data == "gaussian":
        embeddings = rng.standard_normal((n, d))
    else:
        embeddings = clustered_unit(n, d, rng)
    kernel = cosine_kernel(embeddings)
    if asymmetric:
        kernel *= rng.uniform(0.5, 1.0, n).astype(np.float32)[None, :]
    warm = cosine_kernel(clustered_unit(200, 16, np.random.default_rng(1)))  # imports, numba compilation
    run_ours(warm, 60)
    if submodlib:
        run_submodlib(warm, 60)
    if apricot:
        run_apricot(warm, 60)
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    log(
        f"facility location, data={data}{' asymmetric' if asymmetric else ''} n={n} budget={budget} "
        f"repeat={repeat} cpus={os.cpu_count()} OMP_NUM_THREADS={threads} "
        f"load average at start {os.getloadavg()[0]:.1f}"
    )

    times: dict[str, list[float]] = {"ours": [], "submodlib": [], "submodlib_build": [], "apricot": []}
    picks: dict[str, list[int]] = {}
    evaluations = 0
    for _ in range(repeat):  # interleaved, so that a busy spell on the machine hits all three
        picks["ours"], seconds, evaluations = run_ours(kernel, budget)
        times["ours"].append(seconds)
        gc.collect()
        if submodlib:
            picks["submodlib"], build_s, greedy_s = run_submodlib(kernel, budget)
            times["submodlib"].append(build_s + greedy_s)
            times["submodlib_build"].append(build_s)
            gc.collect()
        if apricot:
            picks["apricot"], seconds = run_apricot(kernel, budget)
            times["apricot"].append(seconds)
            gc.collect()

    ours = picks["ours"]
    ours_s = statistics.median(times["ours"])
    summary: dict[str, object] = {
        "data": data,
        "asymmetric": asymmetric,
        "n": n,
        "budget": budget,
        "seed": seed,
        "repeat": repeat,
        "ours_evaluations": evaluations,
    }
    log(
        "| implementation | seconds (median) | / ours | same picks (order) | picks in common | first difference | f(selection) |"
    )
    log("|---|---|---|---|---|---|---|")
    for name, label in (
        ("ours", "ours (lazy)"),
        ("submodlib", "submodlib (LazyGreedy)"),
        ("apricot", "apricot (lazy)"),
    ):
        if name not in picks:
            continue
        seconds = statistics.median(times[name])
        match = compare(kernel, ours, picks[name])
        value = facility_location_value(kernel, picks[name])
        note = f" (build {statistics.median(times['submodlib_build']):.2f})" if name == "submodlib" else ""
        first = "-" if match["first_difference"] is None else str(match["first_difference"])
        if match["tie"] is not None:
            kind = "a tie" if match["tie"] else "not a tie"
            first += f" ({kind}; our pick's gain {match['gain_there']:.4g})"
        log(
            f"| {label} | {seconds:.2f}{note} | {seconds / ours_s:.2f} | {'yes' if match['same'] else 'no'} | "
            f"{match['common']}/{budget} | {first} | {value:.4f} |"
        )
        summary[name] = {
            "seconds": [round(t, 3) for t in times[name]],
            "median_s": round(seconds, 3),
            "ratio_to_ours": round(seconds / ours_s, 2),
            "value": round(value, 4),
            **match,
        }
    if report_live_share:
        shares = live_share(kernel, ours, (1, 10, 100, 1000))
        log(
            "entries that can still count after t picks: "
            + ", ".join(f"t={t}: {v:.2%}" for t, v in shares.items())
        )
        summary["live_share"] = {str(t): round(v, 5) for t, v in shares.items()}
    summary["prune_share"] = submodular_gains.PRUNE_SHARE
    return summary


if __name__ == "__main__":
    main()
