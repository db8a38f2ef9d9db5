"""How the cost of each selection algorithm grows with the pool: time and peak memory at N = 10k, 100k,
1M (as far as each fits), the fitted exponent, and the extrapolation to the papers' scales.

Every point runs in a fresh subprocess (``--point ALGO --n N``) on random data of the shipped embedding
dimension (``--d`` 384, float32: unit vectors around 1,000 random centres with Zipf-sized clusters,
``density_sketch.clustered_embeddings``), budget ``k = N / 10``:

- ``random``: ``numpy.random.Generator.choice`` without replacement;
- ``density``: the Density sampler (arXiv 2402.09668), ``p3bench.algorithms.density.density_sample``
  (RACE sketch, then the inverse-propensity draw) at its default sketch size;
- ``clusters``: ``spherical_kmeans`` at its default ``round(sqrt(N))`` clusters, then SemDeDup and SSL
  Prototypes on that clustering (``p3bench.algorithms.clusters``);
- ``dpp_cosine``: ``dpp_select(kernel="cosine")`` (the low-rank greedy of ``p3bench.algorithms.dpp``);
- ``dpp_rbf_blocked``: ``dpp_select(kernel="rbf_blocked")`` (the full-rank kernel and the blocked greedy
  of ``dpp_kernels`` / ``dpp_blocked``: O(N k^2), its factor ``4 N k`` bytes);
- ``fl_dense``: facility location's lazy greedy (``p3bench.algorithms.submodular.maximize``) on the
  dense ``(cos + 1) / 2`` kernel (``4 N^2`` bytes, built in the timed part);
- ``fl_knn``: the same on a sparse kernel keeping each point's ``--neighbours`` most similar points
  (exact neighbours by blocked matrix products, O(N^2 d): built in the timed part, reported apart).

Time is wall-clock of the algorithm alone (the data is generated first). Memory is the growth of the
process's peak resident set during the call: the kernel's high-water mark is reset just before it
(``/proc/self/clear_refs``, Linux), then ``VmHWM`` after minus ``VmRSS`` before, so the data itself is not
counted; where ``clear_refs`` is unavailable, ``ru_maxrss`` (which also counts the data generation's peak)
is reported instead and the method says so. The 1-minute load average is recorded with every point.

The exponent ``b`` of ``t = a N^b`` is the least-squares slope of ``log t`` on ``log N`` over the points
with ``N >= 10,000`` that took at least 0.05 s; the extrapolations use it from the largest measured point
(``t(N) = t_max (N / N_max)^b``). A point predicted (by the points before it) to take more than
``--max-seconds`` is not run and says so.

    python benchmarks/growth.py --out benchmarks/results/growth
    python benchmarks/growth.py --algorithms density clusters --sizes 10000 100000 1000000 --out /tmp/g
    python benchmarks/growth.py --point density --n 100000               # one point, JSON on stdout
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

ALGORITHMS: tuple[str, ...] = (
    "random",
    "density",
    "clusters",
    "dpp_cosine",
    "dpp_rbf_blocked",
    "fl_dense",
    "fl_knn",
)
DEFAULT_SIZES: tuple[int, ...] = (10_000, 100_000, 1_000_000)
#: The largest N each algorithm is run at by default (memory: fl_dense's kernel is 4 N^2 bytes, 6.4 GB at
#: 40,000; dpp_rbf_blocked's factor 4 N k = 0.4 N^2 bytes; fl_knn's exact neighbours cost O(N^2 d)).
MAX_N: dict[str, int] = {
    "random": 10_000_000,
    "density": 10_000_000,
    "clusters": 10_000_000,
    "dpp_cosine": 100_000,
    "dpp_rbf_blocked": 100_000,
    "fl_dense": 30_000,
    "fl_knn": 100_000,
}
#: Extra points where the defaults stop short of 100k (so that each curve has three points).
EXTRA_SIZES: dict[str, tuple[int, ...]] = {"fl_dense": (20_000, 30_000), "dpp_rbf_blocked": (30_000,)}


# --------------------------------------------------------------------------------------------------------
# One point (in its own process)


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the process's peak resident set (``VmHWM``) to its current size; False where impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def cosine_kernel_dense(X: np.ndarray, block: int = 4096) -> np.ndarray:
    """``(X X^T + 1) / 2`` in float32 (X unit rows), one ``N x N`` array filled ``block`` rows at a time
    (one ``X @ X.T`` of 30,000 x 384 float32 rows crashed OpenBLAS here: exit -11)."""
    n = X.shape[0]
    kernel = np.empty((n, n), dtype=np.float32)
    for start in range(0, n, block):
        rows = kernel[start : start + block]
        np.matmul(X[start : start + block], X.T, out=rows)
        rows += 1.0
        rows *= 0.5
        np.clip(rows, 0.0, 1.0, out=rows)
    return kernel


def knn_kernel(X: np.ndarray, neighbours: int, block: int = 2048) -> Any:
    """Sparse ``(cos + 1) / 2`` keeping, in row ``i``, the ``neighbours`` points most similar to ``i``
    (itself included): row ``i`` is covered by its neighbours (CSR, float32)."""
    import scipy.sparse as sp

    n = X.shape[0]
    m = min(neighbours, n)
    cols = np.empty((n, m), dtype=np.int64)
    vals = np.empty((n, m), dtype=np.float32)
    for start in range(0, n, block):
        sims = X[start : start + block] @ X.T
        top = np.argpartition(-sims, m - 1, axis=1)[:, :m]
        cols[start : start + block] = top
        vals[start : start + block] = np.take_along_axis(sims, top, axis=1)
    vals += 1.0
    vals *= 0.5
    np.clip(vals, 0.0, 1.0, out=vals)
    indptr = np.arange(0, n * m + 1, m, dtype=np.int64)
    return sp.csr_matrix((vals.ravel(), cols.ravel(), indptr), shape=(n, n))


def _run_algorithm(name: str, X: np.ndarray, k: int, seed: int, neighbours: int) -> dict[str, Any]:
    """Run ``name`` on ``X`` picking ``k``; returns extra facts to report (timed parts, sizes)."""
    if name == "random":
        picks = np.random.default_rng(seed).choice(X.shape[0], size=k, replace=False)
        return {"picked": int(picks.size)}
    if name == "density":
        from p3bench.algorithms.density import density_sample

        result = density_sample(X, k, seed=seed)
        return {"picked": int(result.indices.size)}
    if name == "clusters":
        from p3bench.algorithms.clusters import prototypes, semdedup, spherical_kmeans

        start = time.perf_counter()
        km = spherical_kmeans(X, None, seed)
        kmeans_s = time.perf_counter() - start
        dedup = semdedup(X, km, k)
        semdedup_s = time.perf_counter() - start - kmeans_s
        proto = prototypes(X, km, k)
        return {
            "n_clusters": int(np.asarray(km.centroids).shape[0]),
            "kmeans_s": round(kmeans_s, 3),
            "semdedup_s": round(semdedup_s, 3),
            "prototypes_s": round(time.perf_counter() - start - kmeans_s - semdedup_s, 3),
            "picked": [int(dedup.kept.size), int(proto.kept.size)],
        }
    if name in ("dpp_cosine", "dpp_rbf_blocked"):
        from p3bench.algorithms.dpp import dpp_select

        quality = 1.0 - np.random.default_rng(seed + 1).uniform(0.0, 0.5, X.shape[0])
        result = dpp_select(X, k, quality=quality, kernel=name.removeprefix("dpp_"))
        return {"picked": int(result.indices.size), **result.work}  # rbf_blocked: the updates' cost
    if name in ("fl_dense", "fl_knn"):
        from p3bench.algorithms.submodular import maximize

        start = time.perf_counter()
        kernel = cosine_kernel_dense(X) if name == "fl_dense" else knn_kernel(X, neighbours)
        kernel_s = time.perf_counter() - start
        result = maximize("fl", kernel, k, optimizer="lazy")
        out = {"kernel_s": round(kernel_s, 3), "greedy_s": round(time.perf_counter() - start - kernel_s, 3)}
        if name == "fl_knn":
            out["neighbours"] = neighbours
        return {**out, "picked": int(np.asarray(result.indices).size)}
    raise ValueError(f"algorithm {name!r}: expected one of {', '.join(ALGORITHMS)}")


def measure_point(name: str, n: int, *, d: int = 384, seed: int = 0, neighbours: int = 10) -> dict[str, Any]:
    """Time and peak memory growth of one algorithm at one size, in this process (see the docstring)."""
    # imports before the clock starts (scikit-learn's alone takes seconds on a busy machine)
    import scipy.sparse  # noqa: F401
    import sklearn.cluster  # noqa: F401
    from density_sketch import clustered_embeddings

    import p3bench.algorithms.clusters
    import p3bench.algorithms.density
    import p3bench.algorithms.dpp
    import p3bench.algorithms.submodular  # noqa: F401

    X = clustered_embeddings(n, d, clusters=1000, seed=seed)
    k = max(1, n // 10)
    gc.collect()
    reset = _reset_peak()
    rss_before = _proc_status_kib("VmRSS")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    load = os.getloadavg()[0]
    cpu_start, start = time.process_time(), time.perf_counter()
    extra = _run_algorithm(name, X, k, seed, neighbours)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if reset and rss_before is not None:
        peak = (_proc_status_kib("VmHWM") or 0) - rss_before
        method = "VmHWM after clear_refs minus VmRSS before"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_before
        method = "ru_maxrss growth (includes the data generation's peak: a lower bound)"
    return {
        "algorithm": name,
        "n": n,
        "d": d,
        "k": k,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "peak_rss_growth_mib": round(peak / 1024, 1),
        "data_mib": round(X.nbytes / 2**20, 1),
        "memory_method": method,
        "load_avg_1m": round(load, 2),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
        **extra,
    }


# --------------------------------------------------------------------------------------------------------
# The curves (the parent process)


def fit_exponent(points: list[dict[str, Any]], key: str = "seconds") -> tuple[float, float] | None:
    """``(b, a)`` of ``t = a N^b`` (``t``: the points' ``key``), least squares in log-log over points with
    ``N >= 10,000`` and at least 0.05 s (None with fewer than two)."""
    usable = [p for p in points if p.get(key) and p["n"] >= 10_000 and p[key] >= 0.05]
    if len(usable) < 2:
        return None
    x = np.log([p["n"] for p in usable])
    y = np.log([p[key] for p in usable])
    b, log_a = np.polyfit(x, y, 1)
    return float(b), float(math.exp(log_a))


def predict(points: list[dict[str, Any]], n: int, key: str = "seconds") -> float | None:
    """``key`` (seconds, or CPU seconds) at ``n`` from the largest measured point and the fitted exponent."""
    measured = [p for p in points if p.get(key)]
    fit = fit_exponent(points, key)
    if not measured or fit is None:
        return None
    largest = max(measured, key=lambda p: p["n"])
    return largest[key] * (n / largest["n"]) ** fit[0]


def _work_key(points: list[dict[str, Any]]) -> str:
    """``cpu_seconds`` (the work, whatever the machine's load) where every measured point has it."""
    measured = [p for p in points if p.get("status") == "measured"]
    return "cpu_seconds" if measured and all("cpu_seconds" in p for p in measured) else "seconds"


def run_point(name: str, n: int, timeout: float, d: int, seed: int, neighbours: int) -> dict[str, Any]:
    """One point in a fresh subprocess; a timeout or a failure is recorded, not raised."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--point",
        name,
        "--n",
        str(n),
        "--d",
        str(d),
        "--seed",
        str(seed),
        "--neighbours",
        str(neighbours),
    ]
    load = round(os.getloadavg()[0], 2)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"algorithm": name, "n": n, "status": f"over the {timeout:.0f} s limit", "load_avg_1m": load}
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        return {"algorithm": name, "n": n, "status": f"failed (exit {done.returncode}): {tail[0]}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["status"] = "measured"
    return result


def curves(
    algorithms: list[str],
    sizes: list[int],
    *,
    max_seconds: float,
    d: int,
    seed: int,
    neighbours: int,
    log: Callable[[str], object] = print,
) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for name in algorithms:
        points: list[dict[str, Any]] = []
        grid = sorted({*(n for n in sizes if n <= MAX_N[name]), *EXTRA_SIZES.get(name, ())})
        for n in grid:
            expected = predict(points, n)
            if expected is not None and expected > max_seconds:
                points.append(
                    {
                        "algorithm": name,
                        "n": n,
                        "status": f"not run: predicted {expected:,.0f} s > {max_seconds:.0f} s",
                    }
                )
                log(f"{name:>16} N={n:>10,}: not run (predicted {expected:,.0f} s)")
                continue
            point = run_point(name, n, max_seconds, d, seed, neighbours)
            points.append(point)
            if point["status"] == "measured":
                log(
                    f"{name:>16} N={n:>10,}: {point['seconds']:9.2f} s, peak +{point['peak_rss_growth_mib']:,.0f} "
                    f"MiB (load {point['load_avg_1m']})"
                )
            else:
                log(f"{name:>16} N={n:>10,}: {point['status']}")
        out[name] = points
    return out


# --------------------------------------------------------------------------------------------------------
# The papers' scales


def extrapolations(
    curves_: dict[str, list[dict[str, Any]]], scoring_tokens_per_s: float | None, machine: dict[str, float]
) -> list[dict[str, Any]]:
    """Machines and hours at the papers' scales, from the fitted curves (see ``assumptions``)."""
    rows: list[dict[str, Any]] = []
    cores, memory_gib = machine["cores"], machine["memory_gib"]
    density = [p for p in curves_.get("density", []) if p.get("status") == "measured"]
    key = _work_key(density)
    # CPU seconds are core-seconds (spread over ``cores`` perfectly: optimistic); wall seconds were
    # measured on ``measured_cores``
    speedup = cores if key == "cpu_seconds" else cores / machine["measured_cores"]
    seconds = predict(density, 364_000_000, key) if density else None
    if seconds is not None:
        largest = max(density, key=lambda p: p["n"])
        per_point = (largest["data_mib"] + largest["peak_rss_growth_mib"]) / largest["n"]  # MiB
        total_gib = per_point * 364e6 / 1024
        machines = math.ceil(total_gib / (0.75 * memory_gib))
        rows.append(
            {
                "what": "Density sampler on 364M documents (arXiv 2402.09668), d=384",
                "measured_cores_hours": float(f"{seconds / 3600:.3g}"),
                "machines": machines,
                "hours": float(f"{seconds / speedup / machines / 3600:.3g}"),
                "how": f"t(364M) = t({largest['n']:,}) (364M / {largest['n']:,})^b in "
                f"{'CPU time' if key == 'cpu_seconds' else 'wall time on ' + str(machine['measured_cores']) + ' cores'}; memory as measured at {largest['n']:,} (embeddings + "
                f"peak growth, {per_point * 1024:.2f} KiB a point) = {total_gib:,.0f} GiB, sharded over "
                f"machines using 75% of {memory_gib:.0f} GiB each, whose sketches merge by summing counts "
                "(the sketch itself: 128 x 20,000 counts); time divided by machines x cores / measured cores",
            }
        )
    clusters = [p for p in curves_.get("clusters", []) if p.get("status") == "measured"]
    key = _work_key(clusters)
    speedup = cores if key == "cpu_seconds" else cores / machine["measured_cores"]
    seconds = predict(clusters, 364_000_000, key) if clusters else None
    if seconds is not None:
        rows.append(
            {
                "what": "k-means + SemDeDup + Prototypes on 364M documents (10,000 clusters in the paper)",
                "measured_cores_hours": float(f"{seconds / 3600:.3g}"),
                "machines": 1,
                "hours": float(f"{seconds / speedup / 3600:.3g}"),
                "how": f"t(364M) from the fitted exponent of the {'CPU' if key == 'cpu_seconds' else 'wall'} time "
                "at the default round(sqrt(N)) clusters; from 100M points on the default stays at 10,000 clusters "
                "(the paper's) and the cost grows about linearly, so this overestimates by up to 3.64^(b - 1); "
                "one machine's cores",
            }
        )
    gpu_rate = machine["gpu_flops"] * machine["gpu_mfu"]
    if scoring_tokens_per_s:
        seconds = 1e9 / scoring_tokens_per_s
        rows.append(
            {
                "what": "P3 (arXiv 2408.05541) scoring, one round over a 1B-token pool, the bench's tiny model",
                "measured_cores_hours": float(f"{seconds / 3600:.3g}"),
                "machines": 1,
                "hours": float(f"{seconds / (cores / machine['measured_cores']) / 3600:.3g}"),
                "how": f"1e9 tokens / {scoring_tokens_per_s:,.0f} tokens/s (scoring_throughput.py, likelihood "
                "pass, two processes on this machine); one forward per token: linear in tokens",
            }
        )
    # P3's public code scores with a 7B model: a forward is 2 P FLOPs per token
    flops = 2 * 7e9 * 1e9
    rows.append(
        {
            "what": "P3 scoring, one round over a 1B-token pool, a 7B model (the public code's size)",
            "measured_cores_hours": None,
            "machines": 8,
            "hours": float(f"{flops / gpu_rate / 8 / 3600:.3g}"),
            "how": f"2 P T = {flops:.1e} FLOPs on 8 accelerators of {machine['gpu_flops']:.3g} FLOP/s at "
            f"{machine['gpu_mfu']:.0%} utilisation (the scoring pass shards over devices with no exchange "
            "but the gathered scores); five rounds rescore the pool five times",
        }
    )
    # multi-agent paper: 1B model, 30B tokens (arXiv 2410.08102): training FLOPs 6 P T
    flops = 6 * 1e9 * 30e9
    rows.append(
        {
            "what": "Multi-agent selection (arXiv 2410.08102): training a 1B model on 30B selected tokens",
            "measured_cores_hours": None,
            "machines": 32,
            "hours": float(f"{flops / gpu_rate / 32 / 3600:.3g}"),
            "how": f"6 P T = {flops:.1e} FLOPs on 32 accelerators as above (the paper: 32 A800, about 14 "
            "hours); the agents' rewards come on top: 51-78% of the training time between updates at U=30 "
            "in benchmarks/multi_agent_rewards.py (tiny model), a share that falls as U grows",
        }
    )
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Growth, d={result['d']}, k=N/10, {result['cpus']} CPUs; memory: peak RSS growth during the call "
        f"({result['memory_method']}).",
        "",
        "| algorithm | N | seconds | CPU seconds | peak RSS growth MiB | load | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, points in result["curves"].items():
        for p in points:
            if p["status"] != "measured":
                lines.append(f"| {name} | {p['n']:,} | | | | {p.get('load_avg_1m', '')} | {p['status']} |")
                continue
            notes = ", ".join(
                f"{key} {p[key]}"
                for key in ("kmeans_s", "semdedup_s", "prototypes_s", "kernel_s", "greedy_s", "n_clusters")
                if key in p
            )
            lines.append(
                f"| {name} | {p['n']:,} | {p['seconds']:.3g} | {p.get('cpu_seconds', float('nan')):.3g} | "
                f"{p['peak_rss_growth_mib']:,.0f} | "
                f"{p['load_avg_1m']} | {notes} |"
            )
    lines += [
        "",
        "| algorithm | fitted exponent b (t ~ N^b), wall | the same, CPU time | points |",
        "|---|---|---|---|",
    ]
    for name, fit in result["exponents"].items():
        b = "" if fit["b"] is None else f"{fit['b']:.2f}"
        b_cpu = "" if fit.get("b_cpu") is None else f"{fit['b_cpu']:.2f}"
        lines.append(f"| {name} | {b} | {b_cpu} | {fit['points']} |")
    if result["extrapolations"]:
        lines += [
            "",
            "| at the papers' scale | hours of the work as measured here (CPU time: core-hours) | machines | hours | how |",
            "|---|---|---|---|---|",
        ]
        for row in result["extrapolations"]:
            lines.append(
                f"| {row['what']} | {row['measured_cores_hours'] if row['measured_cores_hours'] is not None else ''} "
                f"| {row['machines'] if row['machines'] is not None else ''} | {row['hours']} | {row['how']} |"
            )
        lines.append("")
        lines.append("Assumptions: " + "; ".join(f"{k} = {v}" for k, v in result["machine"].items()))
    return "\n".join(lines) + "\n"


def finish(result: dict[str, Any], scoring_tokens_per_s: float | None) -> None:
    """Add the fitted exponents and the extrapolations to ``result`` (its curves and machine)."""
    result["exponents"] = {
        name: {
            "b": None if (fit := fit_exponent(points)) is None else round(fit[0], 3),
            "b_cpu": None if (fit := fit_exponent(points, "cpu_seconds")) is None else round(fit[0], 3),
            "points": sum(p["status"] == "measured" for p in points),
        }
        for name, points in result["curves"].items()
    }
    result["extrapolations"] = extrapolations(result["curves"], scoring_tokens_per_s, result["machine"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--algorithms", nargs="*", default=list(ALGORITHMS), choices=ALGORITHMS)
    parser.add_argument("--sizes", nargs="*", type=int, default=list(DEFAULT_SIZES))
    parser.add_argument("--max-seconds", type=float, default=600.0, help="per point (run or predicted)")
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--neighbours", type=int, default=10, help="fl_knn: neighbours per point")
    parser.add_argument(
        "--scoring-tokens-per-s",
        type=float,
        default=None,
        help="the likelihood pass's tokens/s from scoring_throughput.py (for the 1B-token extrapolation)",
    )
    parser.add_argument("--machine-cores", type=float, default=32, help="cores of a machine, extrapolation")
    parser.add_argument("--machine-memory-gib", type=float, default=256)
    parser.add_argument(
        "--gpu-flops", type=float, default=312e12, help="bf16 dense peak of one accelerator (A100/A800)"
    )
    parser.add_argument("--gpu-mfu", type=float, default=0.4, help="utilisation reached in training")
    parser.add_argument("--out", type=Path, default=None, help="writes OUT.md and OUT.json")
    parser.add_argument("--render", type=Path, default=None, help="print the markdown of a saved JSON")
    parser.add_argument("--merge", type=Path, default=None, help="with --render: curves to take from here")
    parser.add_argument("--point", choices=ALGORITHMS, default=None, help="measure one point, print JSON")
    parser.add_argument("--n", type=int, default=10_000, help="with --point")
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads(args.render.read_text())
        result["machine"].update(
            cores=args.machine_cores,
            memory_gib=args.machine_memory_gib,
            gpu_flops=args.gpu_flops,
            gpu_mfu=args.gpu_mfu,
        )
        for name, points in json.loads(args.merge.read_text())["curves"].items() if args.merge else ():
            result["curves"][name] = points
        finish(result, args.scoring_tokens_per_s)
        print(markdown(result))
        return 0
    if args.point:
        print(
            json.dumps(
                measure_point(args.point, args.n, d=args.d, seed=args.seed, neighbours=args.neighbours)
            )
        )
        return 0
    if args.out is None:
        parser.error("--out is required (without --point)")
    measured = curves(
        args.algorithms,
        args.sizes,
        max_seconds=args.max_seconds,
        d=args.d,
        seed=args.seed,
        neighbours=args.neighbours,
    )
    machine = {
        "measured_cores": float(os.cpu_count() or 1),
        "cores": args.machine_cores,
        "memory_gib": args.machine_memory_gib,
        "gpu_flops": args.gpu_flops,
        "gpu_mfu": args.gpu_mfu,
    }
    methods = {p.get("memory_method") for ps in measured.values() for p in ps if p.get("memory_method")}
    result = {
        "d": args.d,
        "cpus": os.cpu_count(),
        "memory_method": "; ".join(sorted(methods)) or "none measured",
        "curves": measured,
        "machine": machine,
    }
    finish(result, args.scoring_tokens_per_s)
    from run_all import write_atomic  # the benchmarks' atomic writer (imports torch: parent only)

    stem = args.out.with_suffix("") if args.out.suffix in (".md", ".json") else args.out
    write_atomic(stem.parent / f"{stem.name}.json", json.dumps(result, indent=2) + "\n")
    write_atomic(stem.parent / f"{stem.name}.md", markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
