"""Every config composes; configs and registries do not drift apart; every experiment runs under
fast_dev_run through the real pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from p3bench.cli import CONFIG_DIR, group_choices
from p3bench.data import DATASETS
from p3bench.eval.answers import EVALUATORS
from p3bench.methods import METHODS
from p3bench.methods.base import SelectionDataModule
from p3bench.run import train_and_evaluate

from .conftest import SHARED_DATA, compose_config

GROUPS = ["method", "dataset", "model", "trainer", "logger", "callbacks", "paths", "debug"]
EXPERIMENTS = group_choices("experiment")
EXTRA = {"hf": ["model.name_or_path=some/model"]}


@pytest.mark.parametrize(("group", "choice"), [(g, c) for g in GROUPS for c in group_choices(g)])
def test_every_config_composes(group: str, choice: str, tmp_path: Path, cache_dir: Path):
    cfg = compose_config([f"{group}={choice}", *EXTRA.get(choice, [])], tmp_path, cache_dir)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment: str, tmp_path: Path, cache_dir: Path):
    cfg = compose_config([f"experiment={experiment}"], tmp_path, cache_dir)
    assert cfg.experiment_name == experiment


def test_method_configs_and_registry_match():
    configured = {OmegaConf.load(CONFIG_DIR / "method" / f"{c}.yaml").name for c in group_choices("method")}
    assert configured == set(METHODS.names())
    for name in METHODS.names():
        assert issubclass(METHODS.get(name), SelectionDataModule)
        assert METHODS.get(name).name == name


def test_dataset_configs_and_registries_match():
    for choice in group_choices("dataset"):
        cfg = OmegaConf.load(CONFIG_DIR / "dataset" / f"{choice}.yaml")
        assert cfg.name == choice and cfg.name in DATASETS and cfg.evaluator in EVALUATORS
    assert set(DATASETS.names()) == set(group_choices("dataset"))


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_with_fast_dev_run(experiment: str, tmp_path: Path, cache_dir: Path):
    overrides = [f"experiment={experiment}", "debug=fdr"]
    composed = compose_config(overrides, tmp_path, cache_dir)
    if composed.model.name == "hf":
        # a paper-setting experiment (hub model, GPU): run everything else with the tiny model on the CPU
        overrides += ["model=tiny", "model.name_or_path=null", "model.lora=null", "model.dtype=float32"]
        overrides += ["trainer=default", "offline=true", "budget=0.1", "++dataset.params.max_train=300"]
        overrides += ["dataset.max_length=256", "dataset.max_new_tokens=16", "loader.eval_batch_size=16"]
    if composed.dataset.name == "c4" and composed.dataset.params.hub_id:
        # a hub-scale pre-training experiment (sachdeva19_hub): the same pipeline on the local C4 sample, with
        # a locally trained tokenizer and no downloads
        overrides += ["dataset.params.hub_id=null", "dataset.params.max_docs=null", "offline=true"]
        # hub-scale validation and test counts do not fit the 300-document sample: fractions of it instead
        overrides += ["dataset.params.val_size=0.1", "dataset.params.test_size=0.1"]
        overrides += [
            "dataset.params.data_files=${paths.data_dir}/c4_sample/c4_demo.jsonl",
            "trainer=default",
        ]
        overrides += [
            "model.tokenizer.kind=local_bpe",
            "++model.tokenizer.vocab_size=384",
            "dataset.max_length=128",
        ]
        overrides += ["model.architecture.max_position_embeddings=128", "quality_scorers=standin"]
        overrides += ["coverage_embedder.name=tfidf", "coverage_embedder.kwargs={}"]
    if "dpp" in composed.method and composed.method.dpp.enabled:
        # the packaged MiniLM embedder is tested on its own; TF-IDF keeps this check fast
        overrides += ["method.dpp.embedder=tfidf"]
    if composed.dataset.name == "slimpajama":
        # the multi-agent paper's setting (SlimPajama from the hub, a 1.3B model, hub classifiers, a GPU): the
        # method with its default agents on the local Pile sample with the tiny model, no downloads
        overrides += ["dataset=pile", "model=tiny", "trainer=default", "offline=true"]
        overrides += ["~method_options.multi_agent", "dataset.max_length=128", "loader.batch_size=16"]
        overrides += ["trainer.accumulate_grad_batches=1"]
    if composed.method.name.startswith("multi_agent"):
        # the agents' labels kept cheap: a 5-step perplexity stand-in and TF-IDF topics
        overrides += ["+method.agent_options.quality.scorer_options.standin.steps=5"]
        overrides += ["method.agent_options.topic.embedder=tfidf"]
    if composed.dataset.name in ("math", "gsm8k", "apps") and composed.model.name != "hf":
        # a real-data experiment: a few hundred problems are enough to check that it runs
        overrides += ["++dataset.params.max_train=300"]
    if composed.experiment_name.startswith("delift"):
        # DELIFT on instruction data: a pool of 30, a short warm start, a few test responses
        overrides += ["dataset.max_new_tokens=8"]
        if composed.model.get("warm_start"):
            overrides += ["model.warm_start.steps=5", "model.warm_start.warmup_steps=1"]
        if composed.dataset.name == "instruction_transfer":
            overrides += [
                "dataset.params.pool.params.max_train=30",
                "dataset.params.target.params.val_size=6",
            ]
            overrides += ["dataset.params.target.params.test_size=4"]
        else:
            overrides += [
                "dataset.params.max_train=30",
                "dataset.params.val_size=6",
                "dataset.params.test_size=4",
            ]
        if "existing" in composed.method:
            overrides += ["method.existing.max_examples=6"]
    if composed.dataset.name == "apps":
        # the tiny model's programs run in the sandbox: code execution is opt-in
        overrides += ["dataset.params.allow_code_execution=true"]
    cfg = compose_config(overrides, tmp_path, cache_dir)
    # real-data and local text-corpus experiments read ../shared/data (a hub C4 experiment reads its sample)
    local_data = ("math", "gsm8k", "apps", "c4", "pile", "gutenberg", "tinyshakespeare", "text_mix", "alpaca")
    local_data += ("dolly", "gsm8k_instruct", "instruction_transfer")
    if cfg.dataset.name in local_data and not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    results = train_and_evaluate(cfg)
    assert results["status"] == "ok"
    assert (tmp_path / "results.json").is_file()
