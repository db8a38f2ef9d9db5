"""Kendall tau between every pair of samplers' scores on one pool: the paper's Figure 7 (arXiv 2402.09668).

Each sampler of the comparison scores every pool example (in the sign the paper plots: log P(yes) for
Ask-LLM, negated perplexity, negated in-cluster cosine for SemDeDup and Prototypes, kernel density for
Density; Random is a uniform draw). Model scores, embeddings, clusterings and stand-ins come from the cache
the sweep filled, so after ``p3bench -m experiment=sachdeva19`` only the cheap steps (the density
sketch, the in-cluster similarities) run again::

    python experiments/sachdeva19/sampler_correlations.py --out experiments/sachdeva19/kendall_tau.csv

Any override the sweep used can be passed after ``--`` (for example ``-- quality_scorers=hub``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from scipy.stats import kendalltau

from p3bench.cli import CONFIG_DIR
from p3bench.data import load_dataset_splits
from p3bench.run import build_datamodule
from p3bench.utils.io import atomic_write_text

SAMPLERS = [
    "random",
    "density",
    "semdedup",
    "prototypes",
    *[f"askllm_{s}" for s in ("small", "base", "large", "xl", "xxl")],
    *[f"perplexity_{s}" for s in ("small", "base", "large", "xl", "xxl")],
    *[f"perplexity_{s}" for s in ("20k", "100k", "300k", "500k", "700k")],
]


def pool_scores(overrides: list[str], samplers: list[str]) -> dict[str, np.ndarray]:
    """Every sampler's pool scores under the experiment's config with ``overrides``."""
    scores: dict[str, np.ndarray] = {}
    splits = None
    for sampler in samplers:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[*overrides, f"method={sampler}", "hydra.output_subdir=null"])
        OmegaConf.set_struct(cfg, False)
        cfg.paths.output_dir = str(Path.cwd())
        if splits is None:
            params = OmegaConf.to_container(cfg.dataset.params, resolve=True)
            splits = load_dataset_splits(cfg.dataset.name, **params)
        if sampler == "random":
            scores[sampler] = np.random.default_rng(int(cfg.seed)).random(len(splits.train))
            continue
        datamodule = build_datamodule(cfg, splits)
        scores[sampler] = np.asarray(datamodule.pool_scores(None).values, dtype=np.float64)
        print(f"{sampler}: {len(scores[sampler])} scores", file=sys.stderr)
    return scores


def tau_matrix(scores: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    names = list(scores)
    matrix = np.eye(len(names))
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            tau = kendalltau(scores[a], scores[names[j]]).statistic  # tau-b: ties handled
            matrix[i, j] = matrix[j, i] = tau
    return names, matrix


def markdown(names: list[str], matrix: np.ndarray) -> str:
    short = [n.replace("perplexity_", "ppl_").replace("askllm_", "ask_") for n in names]
    lines = ["| | " + " | ".join(short) + " |", "|---" * (len(names) + 1) + "|"]
    for name, row in zip(short, matrix, strict=True):
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="sachdeva19")
    parser.add_argument("--samplers", nargs="*", default=SAMPLERS)
    parser.add_argument("--out", type=Path, default=None, help="CSV of the matrix (a .md table beside it)")
    parser.add_argument("overrides", nargs="*", help="config overrides (after --)")
    args = parser.parse_args()
    overrides = [f"experiment={args.experiment}", *args.overrides]
    names, matrix = tau_matrix(pool_scores(overrides, args.samplers))
    table = markdown(names, matrix)
    print(table)
    if args.out is not None:
        csv = "sampler," + ",".join(names) + "\n"
        csv += "".join(
            f"{n}," + ",".join(f"{v:.4f}" for v in row) + "\n" for n, row in zip(names, matrix, strict=True)
        )
        atomic_write_text(args.out, csv)
        atomic_write_text(args.out.with_suffix(".md"), table)
        print(f"wrote {args.out} and {args.out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
