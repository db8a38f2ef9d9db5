"""Per-step overhead of in-batch reweighting (IR-DRO, MidRanking; arXiv 2402.14270) as a ratio to plain
training (ERM, method ``full``) with the same model, data, batches and optimizer. Target: ratio <= 1.05.

Each method trains ``--steps`` optimizer steps through the real Trainer, the wall time of every step is
taken from ``on_train_batch_start`` to ``on_train_batch_end`` (forward, weights, logging, backward, optimizer
step), the first ``--warmup`` steps are dropped, and the methods are run in turn ``--repeats`` times so
that drifts in machine load hit all of them alike. The report is the median step time of each method over
all its kept steps and its ratio to ERM's. Every method draws its batches as ``loader.length_grouping`` says
(50 unless overridden; the in-batch methods' own ``method.length_grouping`` is set to follow it), so that
the methods differ in their weights only.

    python benchmarks/reweighting_overhead.py                                  # synthetic_math, tiny model
    python benchmarks/reweighting_overhead.py --overrides experiment=irdro_cpt_cpu --steps 60
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from p3bench.cli import CONFIG_DIR
from p3bench.data import load_dataset_splits
from p3bench.models.factory import build_causal_lm
from p3bench.models.module import SelectionLM
from p3bench.run import build_datamodule

METHODS = ("full", "irdro", "midranking")


class StepTimer(pl.Callback):
    """Wall time of each training batch, from its start hook to its end hook."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_batch_start(
        self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, i: int
    ) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, out: Any, b: Any, i: int
    ) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def config(method: str, overrides: list[str], data_dir: str | None) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        extra = [f"paths.data_dir={data_dir}"] if data_dir else []
        cfg = compose(config_name="config", overrides=[f"method={method}", *overrides, *extra])
    with open_dict(cfg):
        cfg.paths.output_dir = "."
        if "length_grouping" in cfg.method:
            # the same batches for every method: the in-batch methods' own batching follows the loader's
            cfg.method.length_grouping = None
    return cfg


def step_times(method: str, overrides: list[str], steps: int, data_dir: str | None) -> list[float]:
    cfg = config(method, overrides, data_dir)
    pl.seed_everything(int(cfg.seed), verbose=False)
    splits = load_dataset_splits(cfg.dataset.name, **OmegaConf.to_container(cfg.dataset.params, resolve=True))
    datamodule = build_datamodule(cfg, splits)
    model = build_causal_lm(cfg.model, datamodule.tokenizer, cfg.offline)
    module = SelectionLM(
        model,
        datamodule.tokenizer,
        instantiate(cfg.model.optimizer),
        scheduler=None,
        task=splits.task,
        evaluator=None,
    )
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=cfg.trainer.precision,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        max_steps=steps,
        max_epochs=-1,
        # a CSV logger at the run's interval: the weight metrics' logging cost is part of what is measured
        logger=pl.loggers.CSVLogger("/tmp/p3bench-overhead-logs"),
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        callbacks=[timer],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=datamodule)
    return timer.seconds


def measure(
    *,
    overrides: list[str] | None = None,
    methods: tuple[str, ...] | list[str] = METHODS,
    steps: int = 80,
    warmup: int = 10,
    repeats: int = 3,
    threads: int = 2,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Each method's median step time over ``repeats`` interleaved runs (the first ``warmup`` steps of
    each dropped) and its ratio to ERM's (``full``); returns the summary the CLI prints as JSON."""
    overrides = list(overrides or [])
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    kept: dict[str, list[float]] = {m: [] for m in methods}
    try:
        for _ in range(repeats):
            for method in methods:
                kept[method].extend(step_times(method, overrides, steps, data_dir)[warmup:])
    finally:
        torch.set_num_threads(previous)
    medians = {m: statistics.median(v) for m, v in kept.items()}
    reference = medians.get("full")
    return {
        "overrides": overrides,
        "steps_kept_per_method": {m: len(v) for m, v in kept.items()},
        "median_step_ms": {m: round(1000 * v, 3) for m, v in medians.items()},
        "ratio_to_erm": {m: round(v / reference, 4) for m, v in medians.items()} if reference else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides for every run")
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None, help="paths.data_dir (default: the config's)")
    args = parser.parse_args()
    summary = measure(
        overrides=args.overrides,
        methods=args.methods,
        steps=args.steps,
        warmup=args.warmup,
        repeats=args.repeats,
        threads=args.threads,
        data_dir=args.data_dir,
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
