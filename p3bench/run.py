"""One run: compose -> select -> train -> evaluate -> write results. Reads top to bottom."""

from __future__ import annotations

import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor

from p3bench.callbacks import RunState, TokenBudget
from p3bench.checkpoints import AtomicCheckpointIO
from p3bench.compute import model_size, run_compute, selection_backward_tokens
from p3bench.data import DatasetSplits
from p3bench.data.arrow_pool import pool_texts
from p3bench.errors import Interrupted
from p3bench.eval.answers import EVALUATORS
from p3bench.methods.base import SelectionDataModule
from p3bench.models.factory import build_causal_lm, build_tokenizer
from p3bench.models.module import SelectionLM
from p3bench.models.warm_start import warm_start, warm_start_settings
from p3bench.preflight import method_options, prepare_run
from p3bench.results import (
    CONTINUOUS_HEADLINES,
    INSTRUCTION_BESIDE_HEADLINE,
    PREVIOUS_RESULTS_FILE,
    RESULTS_FILE,
    SCHEMA_VERSION,
    TASK_HEADLINES,
    package_versions,
    selection_rows,
    selection_summary,
    write_run_files,
)
from p3bench.resume import keep_csv_history, recorded_fit_metrics, set_aside_outdated_results
from p3bench.throughput import TrainThroughput, throughput_summary
from p3bench.tracking import SelectionMetrics, log_run_to_wandb
from p3bench.utils.progress import set_progress_enabled

log = logging.getLogger(__name__)


def train_and_evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the composed config end to end and return the results dictionary written to results.json."""
    started = datetime.now(timezone.utc)
    wall_start = time.perf_counter()
    # settings, method options, data and the checkpoint to resume from, before anything is written
    prepared = prepare_run(cfg)
    resume = prepared.resume
    for damaged, reason in resume.skipped if resume is not None else []:
        log.warning("skipping %s: %s; resuming from %s", damaged, reason, resume.path)
    output_dir = Path(cfg.paths.output_dir)
    set_progress_enabled(bool(cfg.progress))  # the selection's own progress bars (scoring, embedding, ...)
    warm_settings = warm_start_settings(OmegaConf.to_container(cfg.model, resolve=True), int(cfg.seed))
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)

    splits = prepared.splits
    evaluator = EVALUATORS.get(cfg.dataset.evaluator)
    if splits.task == "code" and cfg.test:
        # checking runs the model's programs: refuse now, not after training, when that is switched off
        from p3bench.execution import require_code_execution

        require_code_execution()
    datamodule = build_datamodule(cfg, splits)
    tokenizer = datamodule.tokenizer
    model = build_causal_lm(cfg.model, tokenizer, cfg.offline)
    warm_record = None
    if warm_settings is not None:
        # continual pre-training (arXiv 2402.14270) starts from a pre-trained model: pre-train the fresh one
        corpus = warm_settings.corpus_examples(splits.train)
        warm_record = warm_start(model, tokenizer, corpus, warm_settings, cfg.paths.cache_dir)
    module = SelectionLM(
        model=model,
        tokenizer=tokenizer,
        optimizer=instantiate(cfg.model.optimizer),
        scheduler=cfg.model.scheduler,
        evaluator=evaluator,
        max_new_tokens=cfg.dataset.max_new_tokens,
        test_sampling=OmegaConf.to_container(cfg.test_sampling, resolve=True),
        seed=int(cfg.seed),
        task=splits.task,
    )

    ckpt_path = None if resume is None else str(resume.path)
    if resume is not None:
        restore_selection_state(datamodule, resume.checkpoint)
        if is_global_zero():
            # a finished run's results stay until the resume replaces them, unless it changes what they report
            set_aside_outdated_results(output_dir, cfg, RESULTS_FILE)

    loggers = [instantiate(c) for c in cfg.logger.values()] if cfg.get("logger") else []
    if resume is not None and is_global_zero():
        keep_csv_history(loggers, resume.global_step)  # the loss curves keep their earlier epochs
    callbacks = [instantiate(c) for c in cfg.callbacks.values()] if cfg.get("callbacks") else []
    if not loggers:  # Lightning's learning-rate monitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    callbacks.append(SelectionMetrics())  # each selection round's selection/* metrics, to every logger
    callbacks.append(RunState(prepared.identity))  # what a resume checks and reports, in every checkpoint
    callbacks.append(TrainThroughput())  # examples/s, tokens/s and MFU of the training steps
    trainer_overrides: dict[str, Any] = {
        # a per-epoch dynamic method reloads every epoch and maps the epoch to its round itself, so resuming
        # at any epoch keeps rounds in phase; a step-scheduled one keeps one loader whose sampler switches
        # rounds at their optimiser step (p3bench.models.step_sampler)
        "reload_dataloaders_every_n_epochs": 1
        if datamodule.is_dynamic and not datamodule.is_step_scheduled
        else 0,
        # the datamodule shards training batches across processes itself (length-grouped batches)
        "use_distributed_sampler": False,
    }
    if not cfg.trainer.get("plugins"):
        # checkpoints written whole in their own directory, so a full disk cannot truncate last.ckpt
        trainer_overrides["plugins"] = [AtomicCheckpointIO()]
    in_context = cfg.evaluation.mode == "icl"
    if in_context:  # the selection is judged as demonstrations: select (fit's setup), train nothing
        trainer_overrides.update(max_epochs=0, max_steps=-1, num_sanity_val_steps=0, limit_val_batches=0)
    target_tokens = None
    if cfg.regime == "iso_compute":
        full_pool_tokens = sum(datamodule.token_lengths(range(len(datamodule.pool))))
        target_tokens = int(cfg.trainer.max_epochs) * full_pool_tokens
        callbacks.append(TokenBudget(target_tokens))
        trainer_overrides["max_epochs"] = -1
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, **trainer_overrides
    )
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    try:
        fit_start = time.perf_counter()
        call_trainer(trainer, trainer.fit, module, datamodule=datamodule, ckpt_path=ckpt_path)
        fit_seconds = time.perf_counter() - fit_start
        fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if resume is not None and trainer.global_step == resume.global_step:
            # resumed at the end of training: nothing was trained, so the metrics are the checkpoint's
            fit_metrics = {**recorded_fit_metrics(resume.checkpoint), **fit_metrics}
        test_metrics: dict[str, float] = {}
        eval_seconds = 0.0
        icl_record = None
        if cfg.test and not trainer.interrupted:
            eval_start = time.perf_counter()
            if in_context:
                icl_record = use_demonstrations(cfg, datamodule)
            tested = call_trainer(trainer, trainer.test, module, datamodule=datamodule, verbose=False)
            test_metrics = {k: float(v) for k, v in tested[0].items()}
            eval_seconds = time.perf_counter() - eval_start
        results = build_results(
            cfg,
            datamodule,
            module,
            trainer,
            started,
            wall_start,
            fit_seconds,
            eval_seconds,
            {**fit_metrics, **test_metrics},
            target_tokens,
            ckpt_path,
            warm_record,
        )
        results["evaluation"] = {"mode": cfg.evaluation.mode, **(icl_record or {})}
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({f"final/{k}": v for k, v in results["metrics"].items()})
            write_run_files(
                output_dir,
                results,
                selection_rows(datamodule),
                module.test_records,
                selection_parquet_above=int(cfg.pool.selection_parquet_above),
            )
            (output_dir / PREVIOUS_RESULTS_FILE).unlink(missing_ok=True)  # replaced: no longer needed
            log_run_to_wandb(trainer.loggers, results, output_dir)
    finally:
        close_loggers(trainer.loggers)
    if trainer.is_global_zero:  # after the loggers' own closing output, so the table is what stays on screen
        print_summary(results, output_dir)
    return results


def build_datamodule(cfg: DictConfig, splits: DatasetSplits) -> SelectionDataModule:
    """The configured method's datamodule over ``splits``, with the run's tokenizer (trained on the pool for
    the tiny model, loaded otherwise)."""
    method_cls, method_cfg = method_options(cfg)
    # a method config may set its own batching (in-batch reweighting: random batches); null: the loader's
    own_grouping = method_cfg.pop("length_grouping", None)
    # the pool's texts train a local tokenizer (an Arrow pool streams them, never holding them all)
    texts = pool_texts(splits.train) if cfg.model.tokenizer.get("kind") == "local_bpe" else []
    tokenizer = build_tokenizer(cfg.model.tokenizer, texts, cfg.paths.cache_dir, cfg.offline)
    del texts
    datamodule = method_cls(
        splits=splits,
        tokenizer=tokenizer,
        budget=cfg.budget,
        seed=int(cfg.seed),
        batch_size=cfg.loader.batch_size,
        eval_batch_size=cfg.loader.eval_batch_size,
        num_workers=cfg.loader.num_workers,
        length_grouping=cfg.loader.length_grouping if own_grouping is None else own_grouping,
        max_length=cfg.dataset.max_length,
        cache_dir=cfg.paths.cache_dir,
        **method_cfg,
    )
    datamodule.pool_num_proc = int(cfg.pool.num_proc)
    return datamodule


def use_demonstrations(cfg: DictConfig, datamodule: SelectionDataModule) -> dict[str, Any]:
    """In-context evaluation: the test split's prompts get the ``evaluation.icl.k`` selected examples most
    similar to each as demonstrations (:mod:`p3bench.eval.icl`); returns what results.json records of it."""
    from p3bench.embeddings import build_embedder
    from p3bench.eval.icl import icl_prompts

    icl = cfg.evaluation.icl
    embedder = build_embedder(str(icl.embedder), **OmegaConf.to_container(icl.embedder_kwargs, resolve=True))
    prompts = icl_prompts(
        datamodule.splits.test,
        datamodule.selected_examples(),
        k=int(icl.k),
        embedder=embedder,
        tokenizer=datamodule.tokenizer,
        max_length=int(cfg.dataset.max_length),
        max_new_tokens=int(cfg.dataset.max_new_tokens),
        cache_dir=cfg.paths.cache_dir,
    )
    datamodule.use_test_examples(prompts.examples)
    return {**prompts.info, "embedding_forward_tokens": prompts.forward_tokens}


def restore_selection_state(datamodule: SelectionDataModule, checkpoint: dict[str, Any]) -> None:
    """Load the selection state before fitting, so a static method does not select again in ``setup``."""
    state = checkpoint.get(type(datamodule).__qualname__)
    if state is not None:
        datamodule.load_state_dict(state)


def call_trainer(trainer: pl.Trainer, function: Any, *args: Any, **kwargs: Any) -> Any:
    """``trainer.fit`` or ``trainer.test``: Lightning ends a Ctrl-C it caught with ``sys.exit(1)``; that
    becomes :class:`Interrupted`, which the command turns into its own exit code."""
    try:
        return function(*args, **kwargs)
    except SystemExit:
        if trainer.interrupted:
            raise Interrupted(Interrupted.last_signal) from None
        raise


def is_global_zero() -> bool:
    """Whether this process is global rank zero (before the Trainer exists: from the launcher's env)."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def build_results(
    cfg: DictConfig,
    datamodule: SelectionDataModule,
    module: SelectionLM,
    trainer: pl.Trainer,
    started: datetime,
    wall_start: float,
    fit_seconds: float,
    eval_seconds: float,
    metrics: dict[str, float],
    target_tokens: int | None,
    resumed_from: str | None = None,
    warm_start_record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    selection = selection_summary(datamodule)
    selection_seconds = datamodule.selection_seconds_this_process
    counters = module.global_counters()
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "ok",
        "run": {
            "experiment": cfg.experiment_name,
            "method": cfg.method.name,
            "dataset": cfg.dataset.name,
            "model": cfg.model.name,
            "budget": cfg.budget,
            "seed": int(cfg.seed),
            "regime": cfg.regime,
            # the options the method ran with: method.* and the experiment's method_options.<name>
            "method_options": method_options(cfg)[1],
            "output_dir": str(cfg.paths.output_dir),
            "command": " ".join(sys.argv),
            "resumed_from": resumed_from,
            "started_at": started.isoformat(),
            "finished_at": datetime.now(timezone.utc).isoformat(),
        },
        "dataset": {
            "name": datamodule.splits.name,
            "task": datamodule.splits.task,
            "sizes": {
                split: len(getattr(datamodule.splits, split)) for split in ("train", "validation", "test")
            },
            "info": datamodule.splits.info,
            # for code tasks: the isolation the sandbox ran programs under
            **({"execution": execution_report()} if datamodule.splits.task == "code" else {}),
        },
        # the weights training started from: warm_start is null for a fresh or hub model, else the
        # provenance of its pre-training (cache key, steps, first and final train loss, corpus size)
        "model": {"name": cfg.model.name, "warm_start": warm_start_record},
        "selection": selection,
        "metrics": dict(sorted(metrics.items())),
        "compute": {
            "regime": cfg.regime,
            "target_train_tokens": target_tokens,
            "reached_target_tokens": None
            if target_tokens is None
            else counters["train_tokens"] >= target_tokens,
            "train_tokens": counters["train_tokens"],
            "train_target_tokens": counters["train_target_tokens"],
            "train_examples_seen": counters["train_examples"],
            "optimizer_steps": int(trainer.global_step),
            "epochs_completed": int(trainer.current_epoch),
            "selection_forward_tokens": sum(r["forward_tokens"] for r in selection["rounds"]),
            # backward passes of the selection (look-ahead steps, per-example gradients): 4N FLOPs a token
            "selection_backward_tokens": selection_backward_tokens(datamodule.rounds),
            # FLOPs by model and role (components), train_flops, selection_flops, total_flops: p3bench.compute
            **run_compute(
                datamodule.rounds,
                model_size(module.model),
                counters["train_tokens"],
                (warm_start_record or {}).get("train_tokens"),
            ),
            # wall times of this process (a resumed run counts from its restart); train includes validation
            "seconds": {
                "selection": round(selection_seconds, 3),
                "train": round(max(0.0, fit_seconds - selection_seconds), 3),
                "eval": round(eval_seconds, 3),
                "total": round(time.perf_counter() - wall_start, 3),
            },
            # the strategy's device: Lightning moves the module back to the CPU when fit and test end
            "device": str(trainer.strategy.root_device),
            "world_size": int(trainer.world_size),
            # this process's training and scoring batches: examples/s, tokens/s, MFU (p3bench.throughput)
            "throughput": throughput_summary(
                module.throughput,
                model_size(module.model).total,
                trainer.strategy.root_device,
                str(trainer.precision),
                next(module.model.parameters()).dtype,
                int(trainer.world_size),
            ),
        },
        "versions": package_versions(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def execution_report() -> dict[str, Any]:
    """Whether code execution was on, with which limits, and the isolation this machine gave it."""
    from p3bench.execution import code_execution_allowed, execution_settings, isolation_report

    settings = execution_settings()
    return {
        "allowed": code_execution_allowed(),
        "settings": {k: v for k, v in vars(settings).items() if isinstance(v, (bool, int, float, str))},
        "isolation": isolation_report(),
    }


def print_summary(results: dict[str, Any], output_dir: Path) -> None:
    run, sel, metrics, compute = results["run"], results["selection"], results["metrics"], results["compute"]
    task = results.get("dataset", {}).get("task")
    is_lm, is_instruction = task == "lm", task == "instruction"
    levels = (
        [] if is_lm or is_instruction else sorted(k for k in metrics if k.startswith("test/accuracy_level_"))
    )
    first = "test ppl" if is_lm else "test rouge-l" if is_instruction else "test acc"
    header = ["method", "budget", "examples", "train tokens", first] + [k.rsplit("_", 1)[-1] for k in levels]
    beside = INSTRUCTION_BESIDE_HEADLINE if is_instruction else CONTINUOUS_HEADLINES
    continuous = [k for k in beside if k in metrics][: 2 if is_instruction else 1]
    header += [k.removeprefix("test/").replace("_", " ") for k in continuous]
    header.append("time (s)")
    score = metrics.get(TASK_HEADLINES.get(task, TASK_HEADLINES["qa"])[0])
    low, high = metrics.get("test/accuracy_ci_low"), metrics.get("test/accuracy_ci_high")
    accuracy = "-" if score is None else f"{score:.3f}"
    if is_instruction and score is not None:
        accuracy += f" ± {metrics.get('test/rouge_l_se', float('nan')):.3f}"
    elif not is_lm and score is not None and low is not None and high is not None:
        accuracy += f" [{low:.3f}, {high:.3f}]"
    row = [
        run["method"],
        str(run["budget"]),
        str(sel["n_selected"]),
        str(compute["train_tokens"]),
        "-" if score is None else f"{score:.2f}" if is_lm else accuracy,
        *[f"{metrics[k]:.3f}" for k in levels],
        *[f"{metrics[k]:.3f} ± {metrics.get(k + '_se', float('nan')):.3f}" for k in continuous],
        f"{compute['seconds']['total']:.0f}",
    ]
    widths = [max(len(h), len(c)) for h, c in zip(header, row, strict=True)]
    print()
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    if is_lm:
        print(
            f"(test ppl is held-out perplexity, exp of the mean NLL per token)\nrun directory: {output_dir}"
        )
    elif is_instruction:
        print(
            "(ROUGE-L F1 of the generated responses against the references, then the responses' other metrics "
            "(docs/results.md), each ± its standard error over test examples)\n"
            f"run directory: {output_dir}"
        )
    else:
        print(
            "(test acc with its 95% Wilson interval; per-level columns are test accuracy by difficulty level; "
            "the continuous metric that heads a report near the accuracy floor (docs/comparisons.md) ± its standard "
            "error over test problems)\n"
            f"run directory: {output_dir}"
        )


def close_loggers(loggers: list[Any]) -> None:
    """Always finish wandb runs, also when a sweep job fails, so the next job starts clean."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            if wandb.run is not None:
                wandb.finish()
