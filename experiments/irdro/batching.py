"""What the in-batch weights of IR-DRO and MidRanking (arXiv 2402.14270) compare under random batches
(``method.length_grouping=1``, the default) and under length-grouped ones (``=50``, the root loader's).

Each method is trained for the first ``--steps`` optimizer steps of an experiment (``irdro_sft`` by default)
through the run's own datamodule, model, optimizer, learning-rate schedule (that of the whole run) and the
Lightning Trainer; every step's per-example losses, pool indices and loss coefficients are recorded, and the
steps after ``--skip`` are summarised:

- ``level sd`` / ``length sd`` / ``loss sd``: the mean within-batch standard deviation of the examples'
  difficulty level, token length and loss (the pool's level and length sd are printed above the table);
- ``entropy``, ``ESS / B``: the mean entropy (nats) and effective sample size over batch size of the weights;
- ``rho(w, level)``, ``rho(w, length)``: Spearman correlation, over every (step, example) pair, of the
  example's relative weight ``B * w`` with its level and with its length (0 for uniform weights);
- ``level shift``: the mean of ``sum_i w_i level_i - mean_i level_i`` (how far the weights move the batch's
  mean level towards harder (> 0) or easier (< 0) problems);
- ``mass noisy (share)``, ``mass junk (share)``: the weight on planted label noise and junk, next to their
  share of the batch (the mass uniform weights give).

With several ``--seeds`` every cell is the mean ± sd over seeds.

    python experiments/irdro/batching.py --threads 1                    # irdro_sft, seed 0, 250 steps
    python experiments/irdro/batching.py --seeds 0 1 --steps 500 --skip 250
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from scipy.stats import spearmanr

from p3bench.algorithms.reweighting import weight_stats
from p3bench.cli import CONFIG_DIR
from p3bench.data import load_dataset_splits
from p3bench.eval.answers import EVALUATORS
from p3bench.models.factory import build_causal_lm
from p3bench.models.module import SelectionLM
from p3bench.models.warm_start import warm_start, warm_start_settings
from p3bench.run import build_datamodule

#: (row label, Hydra overrides of the method)
VARIANTS = {
    "irdro": ["method=irdro"],
    "midranking": ["method=midranking"],
    "midranking position=0": ["method=midranking", "method.position=0"],
}
COLUMNS = (
    "level sd",
    "length sd",
    "loss sd",
    "entropy",
    "ESS / B",
    "rho(w, level)",
    "rho(w, length)",
    "level shift",
    "mass noisy",
    "share noisy",
    "mass junk",
    "share junk",
)


@dataclass
class Step:
    """One weighted batch: its per-example losses, pool indices and loss coefficients."""

    losses: np.ndarray
    index: np.ndarray
    coefficients: np.ndarray


class WeightRecorder(pl.Callback):
    """Wraps the datamodule's ``reweight`` to keep every call, and stops training after ``steps`` steps."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.calls: list[Step] = []

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        reweight = datamodule.reweight

        def recording(losses: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
            coefficients = reweight(losses, batch)
            self.calls.append(
                Step(
                    losses.detach().float().cpu().numpy(),
                    batch["index"].cpu().numpy(),
                    coefficients.detach().float().cpu().numpy(),
                )
            )
            return coefficients

        datamodule.reweight = recording

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, out: Any, batch: Any, i: int
    ) -> None:
        if trainer.global_step >= self.steps:
            trainer.should_stop = True


def compose_run(overrides: list[str], output_dir: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = output_dir
    return cfg


def record_steps(cfg: DictConfig, steps: int) -> tuple[list[Step], Any]:
    """The first ``steps`` optimizer steps of the run ``cfg`` describes (as ``p3bench.run`` builds it)."""
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    splits = load_dataset_splits(cfg.dataset.name, **OmegaConf.to_container(cfg.dataset.params, resolve=True))
    datamodule = build_datamodule(cfg, splits)
    model = build_causal_lm(cfg.model, datamodule.tokenizer, cfg.offline)
    settings = warm_start_settings(OmegaConf.to_container(cfg.model, resolve=True), int(cfg.seed))
    if settings is not None:
        warm_start(model, datamodule.tokenizer, splits.train, settings, cfg.paths.cache_dir)
    module = SelectionLM(
        model=model,
        tokenizer=datamodule.tokenizer,
        optimizer=instantiate(cfg.model.optimizer),
        scheduler=cfg.model.scheduler,
        evaluator=EVALUATORS.get(cfg.dataset.evaluator),
        task=splits.task,
    )
    recorder = WeightRecorder(steps)
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        callbacks=[recorder],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=datamodule)
    return recorder.calls, datamodule


def summarise(calls: list[Step], datamodule: Any) -> dict[str, float]:
    pool = datamodule.pool
    levels = np.array([float(ex.meta.get("level", np.nan)) for ex in pool])
    lengths = np.array(datamodule.token_lengths(range(len(pool))), dtype=float)
    flags = {kind: np.array([bool(ex.meta.get(f"is_{kind}")) for ex in pool]) for kind in ("noisy", "junk")}
    rows: dict[str, list[float]] = {c: [] for c in COLUMNS if not c.startswith("rho")}
    relative, level_of, length_of = [], [], []
    for step in calls:
        w = step.coefficients / step.coefficients.sum()
        idx = step.index
        stats = weight_stats(torch.from_numpy(w))
        rows["level sd"].append(float(levels[idx].std()))
        rows["length sd"].append(float(lengths[idx].std()))
        rows["loss sd"].append(float(step.losses.std()))
        rows["entropy"].append(stats["entropy"])
        rows["ESS / B"].append(stats["ess_fraction"])
        rows["level shift"].append(float((w * levels[idx]).sum() - levels[idx].mean()))
        for kind, planted in flags.items():
            rows[f"mass {kind}"].append(float(w[planted[idx]].sum()))
            rows[f"share {kind}"].append(float(planted[idx].mean()))
        relative.append(w * w.size)
        level_of.append(levels[idx])
        length_of.append(lengths[idx])
    out = {k: float(np.mean(v)) for k, v in rows.items()}
    relative_all = np.concatenate(relative)
    out["rho(w, level)"] = float(spearmanr(relative_all, np.concatenate(level_of)).statistic)
    out["rho(w, length)"] = float(spearmanr(relative_all, np.concatenate(length_of)).statistic)
    return out


def pool_context(datamodule: Any) -> str:
    pool = datamodule.pool
    levels = np.array([float(ex.meta.get("level", np.nan)) for ex in pool])
    lengths = np.array(datamodule.token_lengths(range(len(pool))), dtype=float)
    rho = spearmanr(levels, lengths).statistic
    return (
        f"pool: {len(pool)} examples, level sd {levels.std():.3f}, length sd {lengths.std():.2f} tokens, "
        f"Spearman(level, length) {rho:.2f}; batch size {datamodule.batch_size}"
    )


def cell(values: list[float]) -> str:
    if any(np.isnan(values)):
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="irdro_sft")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--groupings", nargs="*", type=int, default=[1, 50])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=250, help="optimizer steps to train (250: one epoch)")
    parser.add_argument("--skip", type=int, default=50, help="leave the first SKIP steps out of the summary")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--overrides", nargs="*", default=[], help="further Hydra overrides for every run")
    args = parser.parse_args()
    if not 0 <= args.skip < args.steps:
        parser.error(f"--skip={args.skip}: expected 0 <= skip < --steps={args.steps}")
    torch.set_num_threads(args.threads)
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    context = ""
    with tempfile.TemporaryDirectory() as output_dir:
        for variant in args.variants:
            for grouping in args.groupings:
                for seed in args.seeds:
                    overrides = [
                        f"experiment={args.experiment}",
                        *VARIANTS[variant],
                        f"method.length_grouping={grouping}",
                        f"seed={seed}",
                        *args.overrides,
                    ]
                    calls, datamodule = record_steps(compose_run(overrides, output_dir), args.steps)
                    context = context or pool_context(datamodule)
                    results.setdefault((variant, grouping), []).append(
                        summarise(calls[args.skip :], datamodule)
                    )
    print(f"experiment={args.experiment}, seeds {args.seeds}, steps {args.skip + 1}-{args.steps} of each run")
    print(context + "\n")
    print("| method | length_grouping | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for (variant, grouping), runs in results.items():
        cells = [cell([r[c] for r in runs]) for c in COLUMNS]
        print(f"| {variant} | {grouping} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
