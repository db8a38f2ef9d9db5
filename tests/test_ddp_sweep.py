"""DDP training jobs inside a ``-m`` sweep (two CPU processes each, gloo): every job completes with both
processes on that job alone (Lightning's launcher would have each child run the whole sweep again), one
after the other in the same process (the basic launcher) and in submitit's worker processes; a relaunch of
the finished sweep runs nothing. Under SLURM (simulated here: two tasks with SLURM's variables, as submitit's
``tasks_per_node=2`` starts them) the tasks are the job's processes and Lightning's SLURMEnvironment joins
them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from .conftest import cli_env, read_results, run_cli
from .test_sweeps import job_dirs, plugin_installed, skipped_lines

DDP_SWEEP = [
    "-m",
    "debug=smoke",
    "method=random",
    "seed=0,1",
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.enable_progress_bar=false",
    "hydra.sweep.dir=sweep",
]


def check_ddp_jobs(root: Path) -> list[Path]:
    """Both jobs finished on two processes with their own settings, and nothing ran twice or elsewhere."""
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["sweep"]
    jobs = job_dirs(root / "sweep")
    assert [p.name for p in jobs] == ["0_random_b0.5_s0", "1_random_b0.5_s1"]
    for seed, job in enumerate(jobs):
        results = read_results(job)
        assert results["status"] == "ok" and results["run"]["seed"] == seed
        assert results["compute"]["world_size"] == 2
        assert results["metrics"]["test/n_examples"] == 40
        ids = [json.loads(line)["id"] for line in (job / "predictions.jsonl").read_text().splitlines()]
        assert len(ids) == len(set(ids)) == 40
        # each of the job's two processes joined its process group once, and no other process ran it
        ranks = [
            line for line in (job / "run.log").read_text().splitlines() if "Initializing distributed" in line
        ]
        assert len(ranks) == 2 and any("GLOBAL_RANK: 1" in line for line in ranks), ranks
        # the children wrote no Hydra files of their own over the job's
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert f"seed={seed}" in overrides and not any(o.startswith("hydra.run.dir") for o in overrides)
        assert (job / "completed.json").is_file()
    return jobs


@pytest.mark.slow
def test_ddp_jobs_in_a_sweep_complete_once_and_relaunch_runs_nothing(tmp_path: Path, cache_dir: Path):
    done = run_cli(DDP_SWEEP, tmp_path, cache_dir, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = check_ddp_jobs(tmp_path)
    before = [(p / "results.json").read_bytes() for p in jobs]
    again = run_cli(DDP_SWEEP, tmp_path, cache_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(skipped_lines(again.stdout + again.stderr)) == 2
    assert [(p / "results.json").read_bytes() for p in jobs] == before


def overlap(a: dict, b: dict) -> bool:
    """Whether each run started before the other finished (results.json's start and finish times)."""
    start = [datetime.fromisoformat(r["run"]["started_at"]) for r in (a, b)]
    end = [datetime.fromisoformat(r["run"]["finished_at"]) for r in (a, b)]
    return start[0] < end[1] and start[1] < end[0]


@pytest.mark.slow
def test_joblib_runs_two_ddp_jobs_at_once(tmp_path: Path, cache_dir: Path):
    # loky's workers are not p3bench's __main__: the children's command must not come from them
    done = run_cli([*DDP_SWEEP, "hydra/launcher=local_joblib"], tmp_path, cache_dir, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = (read_results(p) for p in check_ddp_jobs(tmp_path))
    assert overlap(first, second)  # two jobs (four processes) at once


@pytest.mark.slow
@pytest.mark.skipif(
    not plugin_installed("hydra_plugins.hydra_submitit_launcher"), reason="hydra-submitit-launcher absent"
)
def test_ddp_jobs_through_submitit_local_and_relaunch(tmp_path: Path, cache_dir: Path):
    # submitit's worker runs `python -m submitit.core._submit`: the children's command must not come from it
    args = [*DDP_SWEEP, "hydra/launcher=local_submitit"]
    done = run_cli(args, tmp_path, cache_dir, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = check_ddp_jobs(tmp_path)
    assert list((tmp_path / "sweep" / ".submitit").rglob("*_log.out"))  # the jobs went through submitit
    before = [(p / "results.json").read_bytes() for p in jobs]
    again = run_cli(args, tmp_path, cache_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [(p / "results.json").read_bytes() for p in jobs] == before
    logs = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").rglob("*_log.out"))
    assert len(skipped_lines(logs)) == 2


def slurm_task(rank: int, args: list[str], cwd: Path, cache_dir: Path) -> subprocess.Popen:
    """One task of a two-task SLURM job on one node running ``p3bench ARGS`` (what srun gives each task)."""
    env = {
        **cli_env(cache_dir),
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank),
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "127.0.0.1",
        "SLURM_JOB_ID": str(4000 + os.getpid() % 1000),
        "SLURM_JOB_NAME": "p3bench",
    }
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return subprocess.Popen(
        [sys.executable, "-m", "p3bench", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_slurm_job(args: list[str], cwd: Path, cache_dir: Path) -> list[str]:
    tasks = [slurm_task(rank, args, cwd, cache_dir) for rank in (0, 1)]
    outputs = [task.communicate(timeout=600)[0] for task in tasks]
    for task, output in zip(tasks, outputs, strict=True):
        assert task.returncode == 0, output[-3000:]
    return outputs


@pytest.mark.slow
def test_ddp_job_under_slurm_tasks(tmp_path: Path, cache_dir: Path):
    args = [*DDP_SWEEP[:3], "seed=3", *DDP_SWEEP[4:]]
    outputs = run_slurm_job(args, tmp_path, cache_dir)
    [job] = job_dirs(tmp_path / "sweep")
    results = read_results(job)
    assert results["compute"]["world_size"] == 2 and results["metrics"]["test/n_examples"] == 40
    ranks = [
        line for line in (job / "run.log").read_text().splitlines() if "Initializing distributed" in line
    ]
    assert sorted(line.split("GLOBAL_RANK: ")[1][0] for line in ranks) == ["0", "1"]
    assert not any("skipped" in output for output in outputs)
    before = (job / "results.json").read_bytes()
    # resubmitted (a relaunch, or submitit after a time-out): both tasks skip the finished job
    outputs = run_slurm_job(args, tmp_path, cache_dir)
    assert all(len(skipped_lines(output)) == 1 for output in outputs)
    assert (job / "results.json").read_bytes() == before
