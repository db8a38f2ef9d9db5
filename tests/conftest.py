"""Shared test helpers: composing configs the way the CLI does, running the CLI in a subprocess, and the
location of the real datasets (tests that need them skip when ``../shared/data`` is absent)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from p3bench.cli import CONFIG_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()
requires_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is absent")

torch.set_num_threads(1)

#: A one-layer Llama small enough to train for a few steps in a test.
SMALL_LLAMA = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the whole session, so each local tokenizer is trained once."""
    return tmp_path_factory.mktemp("cache")


def compose_config(overrides: list[str], output_dir: Path, cache_dir: Path) -> DictConfig:
    """The config the CLI would build for ``overrides``, with the run directory and cache set."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[*overrides, f"paths.cache_dir={cache_dir}", f"paths.data_dir={SHARED_DATA}"],
            return_hydra_config=True,
        )
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg.hydra
    return cfg


def cli_env(cache_dir: Path) -> dict[str, str]:
    """The environment the tests run ``p3bench`` in as a user would: offline, the shared data and cache,
    one thread, wandb quiet."""
    return {
        **os.environ,
        "P3BENCH_CACHE_DIR": str(cache_dir),
        "P3BENCH_DATA_DIR": str(SHARED_DATA),
        "WANDB_SILENT": "true",
        # wandb's own copies of logged tables and artifacts stay in the test's cache, not the home directory
        "WANDB_DATA_DIR": str(cache_dir / "wandb-data"),
        "WANDB_CACHE_DIR": str(cache_dir / "wandb-cache"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


def run_cli(args: list[str], cwd: Path, cache_dir: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m p3bench ARGS`` in ``cwd`` as a user would, offline, with the shared cache."""
    return subprocess.run(
        [sys.executable, "-m", "p3bench", *args],
        cwd=cwd,
        env=cli_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


#: a short CPU run whose only work that matters is round 0's selection (one epoch of two batches, no test)
ROUND_ZERO_RUN = [
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "dataset.params.n_val=16",
    "dataset.params.n_test=16",
    "test=false",
    "logger=csv",
]


def round_zero_on_one_and_two_processes(
    args: list[str], tmp_path: Path, cache_dir: Path
) -> tuple[dict, dict]:
    """Round 0's record in results.json of ``args`` (with :data:`ROUND_ZERO_RUN`) run through the CLI on one
    process and on two (``trainer=ddp``, gloo on the CPU), each run checked to have that many processes."""
    found = {}
    for world, extra in ((1, ["trainer.devices=1"]), (2, ["trainer=ddp", "trainer.devices=2"])):
        cwd = tmp_path / f"world{world}"
        cwd.mkdir()
        result = run_cli([*ROUND_ZERO_RUN, *args, *extra, "hydra.run.dir=run"], cwd, cache_dir, timeout=400)
        assert result.returncode == 0, result.stderr[-3000:]
        results = read_results(cwd / "run")
        assert results["compute"]["world_size"] == world
        found[world] = next(r for r in results["selection"]["rounds"] if r["round"] == 0)
    return found[1], found[2]


def find_run_dirs(root: Path) -> list[Path]:
    """Run directories below ``root``: the folders holding a ``.hydra/config.yaml``."""
    return sorted(p.parent.parent for p in root.rglob(".hydra/config.yaml"))


#: The tiny real sweep of the report tests and the notebook: two methods (one static, one dynamic) x two
#: budgets x two seeds on a small synthetic_math pool, three epochs each (seconds per run).
TINY_SWEEP = [
    "-m",
    "debug=smoke",
    "method=random,p3_no_dpp",
    "budget=0.3,0.6",
    "seed=0,1",
    "trainer.max_epochs=3",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """The finished multirun directory of :data:`TINY_SWEEP` (8 runs), shared by the tests of a session."""
    root = tmp_path_factory.mktemp("tiny_sweep")
    done = run_cli([*TINY_SWEEP, "hydra.sweep.dir=sweep"], root, cache_dir, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "sweep"


def tiny_t5(tokenizer, num_layers: int = 1):
    """A randomly initialised T5 small enough for scorer tests (an Ask-LLM judge's family)."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=16,
        d_ff=32,
        d_kv=8,
        num_layers=num_layers,
        num_decoder_layers=1,
        num_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5ForConditionalGeneration(config).eval()


def tiny_llama(tokenizer, num_layers: int = 1, max_positions: int = 512, seed: int = 0):
    """A randomly initialised Llama small enough for scorer tests (a perplexity proxy's family)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(autouse=True)
def _progress_switch_restored():
    """A run in this process sets the process-wide progress switch from its ``progress`` setting; restore it
    after each test so that a run with ``progress=false`` does not silence the bars another test expects."""
    from p3bench.utils import progress

    before = progress.progress_enabled()
    yield
    progress.set_progress_enabled(before)
