"""How diverse P3's DPP pick is at the budgets the bench runs, kernel by kernel, on real data.

Data: the default dataset config (synthetic_math, 10,000 training examples), embedded as P3 embeds it
(MiniLM, ``prompt + "\\n" + target``, through the embedding cache), and P3's quality: the ``likelihood``
score (geometric-mean target-token probability, clipped to [1e-6, 1]) under the tiny default model after
one epoch of training on a random half of the pool. The model is trained once with

    p3bench method=random trainer.max_epochs=1 logger=csv test=false hydra.run.dir=<cache>/dpp_diversity/run

(skipped when that run's ``last.ckpt`` exists, or given with ``--checkpoint``) and its scores are cached
next to it. The admitted set of a point ``k/N`` is the ``N`` easiest examples (as P3's pace admits them);
each kernel picks ``k`` of them, and :func:`p3bench.algorithms.diversity.selection_diversity` compares the
pick with the top-``k`` by quality and a random ``k`` of the same admitted set.

    python benchmarks/dpp_diversity.py
    python benchmarks/dpp_diversity.py --points 1000/10000,5000/7500 --kernels cosine,rbf_blocked

Kernels (``--kernels``, default all): ``cosine`` (the default before ``rbf_blocked``: ``S = F F^T +
ridge I``, ridge 1e-3), ``cosine_restart`` (``fill=restart``, the P3 public code), ``cosine_q0.25``
(quality raised to 0.25: the quality/diversity trade-off of arXiv 1709.05135, Sec. 4), ``partitioned16``
(16 seeded random parts, the cosine DPP in each), ``rff`` (random Fourier features of the ``rbf_blocked``
kernel, ``D = 2k`` features, on the low-rank path; only where ``2k <= 4096``), ``rbf_blocked`` (its
defaults: bandwidth 2 x the median distance, ridge 1e-4), ``rbf_blocked_h1`` and ``rbf_blocked_h3``
(1 x and 3 x the median distance), ``rbf_blocked_ridge1e-3`` and ``rbf_blocked_q0.5`` (quality raised
to 0.5).

Columns: the :func:`~p3bench.algorithms.diversity.selection_diversity` keys for the pick, the top-k and
the random subset; ``dup. pairs``: picked examples that share one of the pool's planted near-duplicate
groups with another picked example (pick / top-k / random); ``eff. rank``: the pick's ``effective_rank``
(the cosine kernel's directions above the ridge) and, for ``rbf_blocked``, the kernel's own on a 1,000
sample of the pick (:func:`~p3bench.algorithms.diversity.kernel_effective_rank`); seconds of the
selection alone, one BLAS thread per greedy (see :mod:`p3bench.algorithms.dpp_blocked`); the JSON lines
add ``diagnostics_seconds``, the time of ``selection_diversity`` itself. Before the
table: the quality's quantiles per level and for the planted junk and noisy-label examples. Ends with one
JSON line per row.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from p3bench.algorithms.diversity import kernel_effective_rank, selection_diversity
from p3bench.algorithms.dpp import dpp_select, greedy_map_lowrank, rbf_bandwidth
from p3bench.algorithms.dpp_kernels import RBF_BLOCKED_BANDWIDTH_SCALE, RBF_BLOCKED_RIDGE

REPO = Path(__file__).resolve().parents[1]
RIDGE = 1e-3  # the cosine kernel's (P3's default)
QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
DEFAULT_POINTS = "1000/2000,1000/4000,1000/6000,1000/8000,1000/10000,3000/4000,5000/7500"
Selector = Callable[[np.ndarray, np.ndarray, int], "np.ndarray | None"]


# --------------------------------------------------------------------------------------------------------
# Data: the pool, its MiniLM embeddings and real likelihood scores


def default_config(cache_dir: Path):
    """The composed default config (``method=random``: only the dataset, model and loader settings are
    used), with ``paths.cache_dir`` set."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from p3bench.cli import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=["method=random", f"paths.cache_dir={cache_dir}"])


def train_checkpoint(run_dir: Path, cache_dir: Path) -> Path:
    """One epoch of the tiny default model on a random half of the pool (the CLI, as a user runs it)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        return last
    command = [
        sys.executable,
        "-m",
        "p3bench",
        "method=random",
        "trainer.max_epochs=1",
        "logger=csv",
        "test=false",
        "trainer.enable_progress_bar=false",
        f"paths.cache_dir={cache_dir}",
        f"hydra.run.dir={run_dir}",
    ]
    print("training the scoring model:", " ".join(command[2:]), flush=True)
    subprocess.run(command, cwd=REPO, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return last


def likelihood_scores(cfg, splits, checkpoint: Path, cache_dir: Path) -> np.ndarray:
    """P3's ``likelihood`` scores of the pool under the checkpoint's model (cached by the file's hash)."""
    import torch

    from p3bench.models.factory import build_causal_lm
    from p3bench.run import build_datamodule
    from p3bench.scoring import build_scorer
    from p3bench.utils.io import atomic_save_npy

    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:16]
    path = cache_dir / "dpp_diversity" / f"likelihood_{digest}.npy"
    if path.is_file():
        return np.load(path)
    datamodule = build_datamodule(cfg, splits)
    model = build_causal_lm(cfg.model, datamodule.tokenizer, True)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict({key.removeprefix("model."): value for key, value in state.items()})
    scorer = build_scorer("likelihood", batch_size=int(cfg.loader.eval_batch_size), progress=True)
    module = SimpleNamespace(model=model, device=torch.device("cpu"))
    scores = np.asarray(scorer.score(module, datamodule.pool_items()).scores, dtype=np.float64)
    atomic_save_npy(path, scores)
    return scores


def load_data(cache_dir: Path, checkpoint: Path | None) -> tuple[np.ndarray, np.ndarray, list]:
    """Embeddings (float32), P3's quality (the score clipped to [1e-6, 1]) and the pool's examples."""
    from omegaconf import OmegaConf

    from p3bench.data import load_dataset_splits
    from p3bench.embeddings import build_embedder, cached_embeddings

    cfg = default_config(cache_dir)
    splits = load_dataset_splits(cfg.dataset.name, **OmegaConf.to_container(cfg.dataset.params, resolve=True))
    texts = [f"{ex.prompt}\n{ex.target}" for ex in splits.train]  # P3's dpp.text=prompt_and_target
    embeddings = cached_embeddings(build_embedder("minilm", progress=True), texts, cache_dir)
    if checkpoint is None:
        checkpoint = train_checkpoint(cache_dir / "dpp_diversity" / "run", cache_dir)
    scores = likelihood_scores(cfg, splits, checkpoint, cache_dir)
    return np.asarray(embeddings, dtype=np.float32), np.clip(scores, 1e-6, 1.0), splits.train


# --------------------------------------------------------------------------------------------------------
# The kernels compared


def random_fourier_features(X: np.ndarray, dim: int, bandwidth: float, seed: int = 0) -> np.ndarray:
    """``z(x) = sqrt(2 / D) cos(W x + b)``, ``W ~ N(0, I / h^2)``, ``b ~ U[0, 2 pi)``: ``z(x) . z(y)``
    estimates ``exp(-||x - y||^2 / (2 h^2))`` (Rahimi & Recht, NeurIPS 2007)."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((X.shape[1], dim)) / bandwidth
    b = rng.uniform(0.0, 2 * math.pi, dim)
    return math.sqrt(2.0 / dim) * np.cos(X @ W + b)


def unit(X: np.ndarray) -> np.ndarray:
    return X / np.linalg.norm(X, axis=1, keepdims=True).clip(min=1e-12)


def selectors() -> dict[str, Selector]:
    def cosine(X, q, k):
        return dpp_select(X, k, quality=q, kernel="cosine", ridge=RIDGE).indices

    def cosine_restart(X, q, k):
        return dpp_select(X, k, quality=q, kernel="cosine", fill="restart").indices

    def cosine_q025(X, q, k):
        return dpp_select(X, k, quality=q**0.25, kernel="cosine", ridge=RIDGE).indices

    def partitioned16(X, q, k, parts=16):
        perm = np.random.default_rng(0).permutation(len(X))
        sizes = np.diff(np.round(np.linspace(0, k, parts + 1)).astype(int))
        chosen = [
            part[dpp_select(X[part], int(size), quality=q[part], kernel="cosine", ridge=RIDGE).indices]
            for part, size in zip(np.array_split(perm, parts), sizes, strict=True)
        ]
        return np.concatenate(chosen)

    def rff(X, q, k):
        dim = 2 * k
        if dim > 4096:
            return None  # more features than this costs more than the exact kernel
        Xu = unit(X.astype(np.float64))
        h = RBF_BLOCKED_BANDWIDTH_SCALE * rbf_bandwidth(Xu)
        Z = random_fourier_features(Xu, dim, h)
        return greedy_map_lowrank(Z, k, quality=q, ridge=RBF_BLOCKED_RIDGE).indices

    def rbf_blocked(
        scale: float | None = None, ridge: float | None = None, exponent: float = 1.0
    ) -> Selector:
        def select(X, q, k):
            h = None if scale is None else scale * rbf_bandwidth(unit(X.astype(np.float64)))
            return dpp_select(
                X, k, quality=q**exponent, kernel="rbf_blocked", bandwidth=h, ridge=ridge
            ).indices

        return select

    return {
        "cosine": cosine,
        "cosine_restart": cosine_restart,
        "cosine_q0.25": cosine_q025,
        "partitioned16": partitioned16,
        "rff": rff,
        "rbf_blocked": rbf_blocked(),
        "rbf_blocked_h1": rbf_blocked(scale=1.0),
        "rbf_blocked_h3": rbf_blocked(scale=3.0),
        "rbf_blocked_ridge1e-3": rbf_blocked(ridge=1e-3),
        "rbf_blocked_q0.5": rbf_blocked(exponent=0.5),
    }


def duplicate_pairs(examples: list, indices: np.ndarray) -> int:
    """Picked examples that share a planted near-duplicate group with an earlier-listed picked one."""
    groups = [examples[i].meta.get("dup_group") for i in indices.tolist()]
    groups = [g for g in groups if g is not None]
    return len(groups) - len(set(groups))


def quality_groups(examples: list) -> np.ndarray:
    def group(ex) -> str:
        if ex.meta.get("is_junk"):
            return "junk"
        if ex.meta.get("is_noisy"):
            return "noisy"
        return f"level {ex.meta.get('level')}"

    return np.asarray([group(ex) for ex in examples])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", default=DEFAULT_POINTS, help="k/N_admitted pairs, comma-separated")
    parser.add_argument("--kernels", default=",".join(selectors()), help="comma-separated, see above")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "p3bench")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a trained model's .ckpt to score with")
    parser.add_argument("--seed", type=int, default=0, help="of the random subsets")
    args = parser.parse_args()

    available = selectors()
    names = [name.strip() for name in args.kernels.split(",") if name.strip()]
    unknown = [name for name in names if name not in available]
    if unknown:
        parser.error(f"--kernels: unknown {', '.join(unknown)}: expected some of {', '.join(available)}")
    points = [tuple(int(v) for v in p.split("/")) for p in args.points.split(",")]
    embeddings, quality, examples = load_data(args.cache_dir.resolve(), args.checkpoint)
    easiest = np.argsort(-quality, kind="stable")
    print(f"pool {len(quality)} x {embeddings.shape[1]}, cpus {os.cpu_count()}")
    print(f"quality quantiles {', '.join(f'{v:g}' for v in QUANTILES)}:")
    groups = quality_groups(examples)
    for name in ["all", *sorted(set(groups.tolist()))]:
        values = quality if name == "all" else quality[groups == name]
        print(
            f"  {name:8s} n={values.size:5d}  {np.round(np.quantile(values, QUANTILES), 3).tolist()}",
            flush=True,
        )

    header = (
        "| kernel | k / admitted | overlap top-k (random) | mean cosine pick / top-k / random "
        "| log-det pick / top-k / random | mean quality pick / top-k / random | dup. pairs | eff. rank | s |"
    )
    print("\n" + header + "\n|---|---|---|---|---|---|---|---|---|", flush=True)
    rows = []
    for k, n_admitted in points:
        candidates = np.sort(easiest[:n_admitted])
        X, q = embeddings[candidates], quality[candidates]
        topk = candidates[np.lexsort((candidates, -q))[:k]]
        random = np.random.default_rng(args.seed).choice(candidates, size=k, replace=False)
        dups_topk, dups_random = duplicate_pairs(examples, topk), duplicate_pairs(examples, random)
        for name in names:
            start = time.perf_counter()
            local = available[name](X, q, k)
            seconds = time.perf_counter() - start
            if local is None:
                continue
            picked = candidates[np.asarray(local, dtype=np.int64)]
            start = time.perf_counter()
            stats = selection_diversity(embeddings, picked, quality, candidates, seed=args.seed, ridge=RIDGE)
            diagnostics_seconds = time.perf_counter() - start
            if name == "rbf_blocked":
                stats["kernel_effective_rank_1000"] = kernel_effective_rank(
                    embeddings[picked], ridge=RBF_BLOCKED_RIDGE
                )
            dups = duplicate_pairs(examples, picked)
            row = {"kernel": name, "k": k, "admitted": n_admitted, "seconds": round(seconds, 2), **stats}
            row["diagnostics_seconds"] = round(diagnostics_seconds, 3)
            row.update(
                duplicate_pairs_pick=dups, duplicate_pairs_topk=dups_topk, duplicate_pairs_random=dups_random
            )
            rows.append(row)
            rank = f"{stats['effective_rank']:.0f}"
            if "kernel_effective_rank_1000" in stats:
                rank += f" ({stats['kernel_effective_rank_1000']:.0f}/1000)"
            print(
                f"| {name} | {k} / {n_admitted} | {stats['overlap_topk_quality']:.3f} "
                f"({stats['overlap_random_expected']:.3f}) "
                f"| {stats['mean_cosine_pick']:.4f} / {stats['mean_cosine_topk']:.4f} / "
                f"{stats['mean_cosine_random']:.4f} "
                f"| {stats['logdet_pick']:.4f} / {stats['logdet_topk']:.4f} / {stats['logdet_random']:.4f} "
                f"| {stats['mean_quality_pick']:.3f} / {stats['mean_quality_topk']:.3f} / "
                f"{stats['mean_quality_random']:.3f} | {dups} / {dups_topk} / {dups_random} | {rank} | {seconds:.1f} |",
                flush=True,
            )
    print()
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
