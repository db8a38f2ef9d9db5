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


def run_cli(args: list[str], cwd: Path, cache_dir: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m p3bench ARGS`` in ``cwd`` as a user would, offline, with the shared cache."""
    env = {
        **os.environ,
        "P3BENCH_CACHE_DIR": str(cache_dir),
        "P3BENCH_DATA_DIR": str(SHARED_DATA),
        "WANDB_SILENT": "true",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "p3bench", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def find_run_dirs(root: Path) -> list[Path]:
    """Run directories below ``root``: the folders holding a ``.hydra/config.yaml``."""
    return sorted(p.parent.parent for p in root.rglob(".hydra/config.yaml"))
