"""Throughput and MFU in results.json (``compute.throughput``, ``p3bench.throughput``): the counts agree with
the run's own token accounting, the rates are the counts over the timed seconds, the MFU is the model
FLOP rate over Lightning's peak for the device, ``benchmarks/gpu_throughput.py`` tabulates real runs, and
the ~100M model it uses by default has the parameters its config states."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from lightning_fabric.utilities.throughput import _CUDA_FLOPS

from p3bench import throughput
from p3bench.cli import CONFIG_DIR
from p3bench.compute import non_embedding_parameters
from p3bench.models.factory import build_causal_lm
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.run import train_and_evaluate
from p3bench.throughput import PassTimes, Throughput, peak_flops, precision_dtype, throughput_summary
from tests.conftest import compose_config
from tests.test_compute_flops import llama_by_hand

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["debug=smoke", "test=false", "logger=none", "callbacks=none", "trainer.limit_val_batches=1"]


def test_rates_and_mfu_are_the_counts_over_the_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    times = Throughput()
    times.train.add(8, 1000, 0.5)
    times.train.add(8, 600, 0.3)
    times.scoring.add(64, 4000, 0.25)
    monkeypatch.setattr(throughput, "peak_flops", lambda device, precision: 1e12)
    summary = throughput_summary(times, 1_000_000, torch.device("cpu"), "bf16-mixed", torch.float32, 2)
    train, scoring = summary["train"], summary["scoring"]
    assert (train["examples"], train["tokens"], train["seconds"]) == (16, 1600, 0.8)
    assert train["tokens_per_s"] == pytest.approx(2000.0) and train["examples_per_s"] == pytest.approx(20.0)
    assert train["model_flops_per_s"] == pytest.approx(6 * 1e6 * 2000)
    assert train["mfu"] == pytest.approx(6 * 1e6 * 2000 / 1e12)
    assert scoring["tokens_per_s"] == pytest.approx(16000.0)
    assert scoring["mfu"] == pytest.approx(2 * 1e6 * 16000 / 1e12)
    assert summary["world_size"] == 2 and summary["peak_flops_per_device"] == 1e12
    # nothing timed: no rates, not zeros
    empty = PassTimes().rates(6e6, 1e12)
    assert empty["tokens_per_s"] is None and empty["mfu"] is None and empty["tokens"] == 0


def test_the_peak_is_lightnings_for_the_device_and_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    assert precision_dtype("bf16-mixed") == precision_dtype("bf16-true") == torch.bfloat16
    assert precision_dtype("16-mixed") == torch.float16
    assert precision_dtype("32-true") == precision_dtype("32") == torch.float32
    assert peak_flops(torch.device("cpu"), "bf16-mixed") is None  # no CPU in the table: MFU null
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    h100 = torch.device("cuda", 0)
    assert peak_flops(h100, "bf16-mixed") == _CUDA_FLOPS["h100 sxm"][torch.bfloat16]
    # float32 on a pre-Ampere answer (on Ampere and later, TF32 unless matmul precision is "highest")
    monkeypatch.setattr("lightning_fabric.accelerators.cuda._is_ampere_or_later", lambda: False)
    assert (
        peak_flops(h100, "32-true")
        == peak_flops(h100, torch.float32)
        == _CUDA_FLOPS["h100 sxm"][torch.float32]
    )
    # training in bf16, scoring in the weights' float32: each against its own peak
    times = Throughput()
    times.train.add(8, 1000, 0.5)
    times.scoring.add(8, 1000, 0.5)
    summary = throughput_summary(times, 10**8, h100, "bf16-mixed", torch.float32, 1)
    assert summary["device"] == "cuda:0 (NVIDIA H100 80GB HBM3)" and summary["scoring_dtype"] == "float32"
    assert summary["train"]["mfu"] == pytest.approx(
        6e8 * 2000 / _CUDA_FLOPS["h100 sxm"][torch.bfloat16], rel=1e-3
    )
    assert summary["scoring"]["mfu"] == pytest.approx(
        2e8 * 2000 / _CUDA_FLOPS["h100 sxm"][torch.float32], rel=1e-3
    )
    # an H200 names itself plainly, which Lightning's parser misses: its SXM entry
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert peak_flops(h100, "bf16-mixed") == _CUDA_FLOPS["h200 sxm1"][torch.bfloat16]


def test_a_runs_throughput_counts_its_own_training_and_scoring_tokens(
    tmp_path: Path, cache_dir: Path
) -> None:
    """A dynamic method's run through the Trainer: the timed training batches are every training token and
    example the run counts, the timed scoring batches every token of the run model's scoring pass, and the
    timed seconds fit inside the run's training and selection wall times."""
    cfg = compose_config([*SMOKE, "method=p3_no_dpp", "method.progress=false"], tmp_path, cache_dir)
    results = train_and_evaluate(cfg)
    compute = results["compute"]
    tp = compute["throughput"]
    assert (
        tp["device"] == compute["device"] == "cpu" and tp["precision"] == "32-true" and tp["world_size"] == 1
    )
    assert tp["non_embedding_parameters"] == llama_by_hand(32, 64, 1)  # the smoke model
    train, scoring = tp["train"], tp["scoring"]
    assert train["tokens"] == compute["train_tokens"] > 0
    assert train["examples"] == compute["train_examples_seen"]
    (run_model_pass,) = [
        c for c in compute["components"] if c["name"] == "run_model" and c["role"] == "selection_forward"
    ]
    assert scoring["tokens"] == run_model_pass["tokens"] > 0
    # one pass over the pool a round
    assert scoring["examples"] == results["dataset"]["sizes"]["train"] * len(results["selection"]["rounds"])
    assert 0 < train["seconds"] <= compute["seconds"]["train"]
    assert 0 < scoring["seconds"] <= compute["seconds"]["selection"]
    assert train["tokens_per_s"] == pytest.approx(train["tokens"] / train["seconds"], rel=1e-3)
    assert train["mfu"] is None and tp["peak_flops_per_device"] is None


def test_the_benchmark_tabulates_real_runs(tmp_path: Path) -> None:
    out = tmp_path / "tp"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gpu_throughput.py"),
            "--out",
            str(out),
            "--trainer",
            "cpu",
            "--methods",
            "random",
            "--overrides",
            *[o for o in SMOKE if not o.startswith("logger")],
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = json.loads(out.with_suffix(".json").read_text())
    (row,) = table["runs"]
    results = json.loads((Path(row["run_dir"]) / "results.json").read_text())
    assert row["train"] == results["compute"]["throughput"]["train"]
    assert row["train"]["tokens"] == results["compute"]["train_tokens"] > 0
    md = out.with_suffix(".md").read_text()
    assert f"| random | train | {row['train']['examples']:,} | {row['train']['tokens']:,} |" in md


def test_the_113m_model_has_the_parameters_its_config_states() -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=llama_113m", "trainer=gpu"])
    assert cfg.trainer.precision == "bf16-mixed"
    tokenizer = train_local_tokenizer(["1 + 2 = 3", "the answer is 42"] * 20, vocab_size=300)
    model = build_causal_lm(cfg.model, tokenizer, offline=True)
    assert non_embedding_parameters(model) == llama_by_hand(768, 3072, 12) == 113_265_408
    assert "113,265,408" in (CONFIG_DIR / "model" / "llama_113m.yaml").read_text()
