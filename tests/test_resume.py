"""Resuming through the real command: the run's identity is checked, the loss history and every metric
survive, results are never deleted before their replacement exists, and checkpoints are whole."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from p3bench.checkpoints import AtomicCheckpointIO, load_checkpoint
from p3bench.errors import CheckpointError
from p3bench.resume import identity_differences, run_identity

from .conftest import cli_env, compose_config, read_results, run_cli

#: a few batches of the smoke run: seconds per run
FAST = ["debug=smoke", "budget=0.5", "hydra.run.dir=run", "test=false", "trainer.limit_val_batches=1"]


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("p3bench: error:")]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def csv_rows(path: Path) -> list[tuple]:
    """The rows of a metrics.csv as comparable tuples, without the wall times of the selection."""
    with path.open(newline="") as handle:
        return [
            tuple(sorted((k, v) for k, v in row.items() if v and k != "selection/seconds"))
            for row in csv.DictReader(handle)
        ]


def test_identity_names_each_difference_and_ignores_what_may_change(tmp_path: Path, cache_dir: Path):
    saved = run_identity(compose_config(["budget=0.5"], tmp_path, cache_dir))
    changed = ["budget=1", "seed=3", "+method.extra=1", "trainer.max_epochs=7", "logger=none", "test=false"]
    now = run_identity(compose_config(changed, tmp_path, cache_dir))
    # a count of 1 is not the fraction 1.0 or 0.5; epochs, logging and testing may change on resume
    assert identity_differences(saved, now) == [
        "budget=1 (checkpoint: 0.5)",
        "method.extra=1 (checkpoint: absent)",
        "seed=3 (checkpoint: 0)",
    ]
    assert identity_differences(saved, saved) == []


def test_checkpoint_write_that_fails_leaves_the_previous_one_whole(tmp_path: Path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    real_save = torch.save

    def save_until_the_disk_is_full(obj, handle):
        real_save(obj, handle)
        handle.flush()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    with pytest.raises(OSError) as caught:
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    assert caught.value.filename == str(path)
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind
    assert load_checkpoint(path)["global_step"] == 1
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="is damaged"):
        load_checkpoint(path)


@pytest.mark.slow
def test_resume_checks_the_settings_and_the_checkpoint(tmp_path: Path, cache_dir: Path):
    """Other settings are refused and leave the run as it was; more epochs are allowed; a damaged
    checkpoint is named, and ``last`` resumes from the newest intact one."""
    args = [*FAST, "method=random", "trainer.limit_train_batches=2"]
    first = run_cli(args, tmp_path, cache_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(tmp_path / "run")

    refused = run_cli([*args, "ckpt_path=last", "budget=0.3", "seed=5"], tmp_path, cache_dir)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert [line for line in refused.stderr.splitlines() if line.strip()] == error_lines(refused)
    (line,) = error_lines(refused)
    assert "budget=0.3 (checkpoint: 0.5)" in line and "seed=5 (checkpoint: 0)" in line
    assert "trainer.max_epochs" in line  # what may change instead
    assert snapshot(tmp_path / "run") == before  # not even Hydra's .hydra/ was rewritten

    # training longer is a change a resume may make
    longer = run_cli([*args, "ckpt_path=last", "trainer.max_epochs=2"], tmp_path, cache_dir)
    assert longer.returncode == 0, longer.stderr[-3000:]
    results = read_results(tmp_path / "run")
    assert results["run"]["budget"] == 0.5 and results["run"]["seed"] == 0
    assert results["compute"]["epochs_completed"] == 2
    assert not (tmp_path / "run" / "results.previous.json").exists()

    checkpoints = tmp_path / "run" / "checkpoints"
    last = checkpoints / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # as a copy that ran out of space
    explicit = run_cli([*args, f"ckpt_path={last}", "trainer.max_epochs=3"], tmp_path, cache_dir)
    assert explicit.returncode == 2, explicit.stderr[-3000:]
    (line,) = error_lines(explicit)
    assert f"checkpoint {last} is damaged" in line
    assert f"resume with ckpt_path={checkpoints / 'epoch001.ckpt'}" in line

    fallback = run_cli([*args, "ckpt_path=last", "trainer.max_epochs=2"], tmp_path, cache_dir)
    assert fallback.returncode == 0, fallback.stderr[-3000:]
    assert f"skipping {last}" in (tmp_path / "run" / "run.log").read_text()
    results = read_results(tmp_path / "run")
    assert results["run"]["resumed_from"].endswith("epoch001.ckpt")
    assert results["compute"]["epochs_completed"] == 2


@pytest.mark.slow
def test_resumed_run_keeps_its_loss_history_and_equals_an_uninterrupted_run(tmp_path: Path, cache_dir: Path):
    # every epoch's checkpoint is kept, so the run can be resumed from its first epoch as after a crash
    args = [*FAST, "method=p3", "trainer.max_epochs=2", "callbacks.model_checkpoint.save_top_k=-1"]
    whole = run_cli(args, tmp_path, cache_dir)
    assert whole.returncode == 0, whole.stderr[-3000:]
    run_dir = tmp_path / "run"
    whole_rows, whole_results = csv_rows(run_dir / "csv" / "metrics.csv"), read_results(run_dir)
    assert any(dict(row).get("epoch") == "0" for row in whole_rows)

    resumed = run_cli([*args, f"ckpt_path={run_dir / 'checkpoints' / 'epoch000.ckpt'}"], tmp_path, cache_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # the rows of epoch 0 survive the restart, and epoch 1 is logged once, as in the uninterrupted run
    assert csv_rows(run_dir / "csv" / "metrics.csv") == whole_rows
    results = read_results(run_dir)
    assert results["metrics"] == whole_results["metrics"]
    assert results["selection"]["ids_sha256"] == whole_results["selection"]["ids_sha256"]
    assert results["compute"]["train_tokens"] == whole_results["compute"]["train_tokens"]


@pytest.mark.slow
def test_resume_at_the_end_of_training_reports_every_metric_and_keeps_results_until_replaced(
    tmp_path: Path, cache_dir: Path
):
    args = [
        "debug=smoke",
        "budget=0.5",
        "hydra.run.dir=run",
        "method=random",
        "trainer.limit_train_batches=2",
    ]
    whole = run_cli(args, tmp_path, cache_dir)
    assert whole.returncode == 0, whole.stderr[-3000:]
    run_dir = tmp_path / "run"
    whole_results = (run_dir / "results.json").read_bytes()

    # writing the results fails (here: a directory stands where predictions.jsonl goes, written before
    # results.json): one line, and the good results.json is still there, untouched
    (run_dir / "predictions.jsonl").unlink()
    (run_dir / "predictions.jsonl").mkdir()
    failed = run_cli([*args, "ckpt_path=last"], tmp_path, cache_dir)
    assert failed.returncode == 2, failed.stderr[-3000:]
    (line,) = error_lines(failed)
    assert "predictions.jsonl" in line and "Traceback" not in failed.stderr
    assert (run_dir / "results.json").read_bytes() == whole_results

    (run_dir / "predictions.jsonl").rmdir()
    resumed = run_cli([*args, "ckpt_path=last"], tmp_path, cache_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    before, after = json.loads(whole_results)["metrics"], read_results(run_dir)["metrics"]
    assert {"val/loss", "train/loss", "train/tokens", "test/accuracy"} <= set(after)
    assert after == before  # nothing was trained: the same model reports the same numbers
    assert read_results(run_dir)["run"]["resumed_from"].endswith("last.ckpt")


def can_mount_tmpfs() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True
    )
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs root and a private mount namespace (unshare -m)")
def test_full_disk_while_checkpointing_leaves_whole_checkpoints(tmp_path: Path, cache_dir: Path):
    """A 450 KiB tmpfs holds the first epoch's checkpoint (about 270 KiB) but not last.ckpt beside it."""
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    disk.mkdir()
    command = [sys.executable, "-m", "p3bench", "debug=smoke", "budget=0.5", "method=random", "test=false"]
    command += ["trainer.max_epochs=2", "trainer.limit_val_batches=1", f"hydra.run.dir={disk / 'run'}"]
    script = (
        f"mount -t tmpfs -o size=450k tmpfs {disk} && {{ {' '.join(command)}; rc=$?; "
        f"cp -a {disk / 'run'} {kept}; exit $rc; }}"
    )
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        cwd=tmp_path,
        env=cli_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    (line,) = error_lines(done)
    assert "last.ckpt" in line and "ENOSPC" in line and "Traceback" not in done.stderr
    names = sorted(p.name for p in (kept / "checkpoints").iterdir())
    assert names == ["epoch000.ckpt"]  # no truncated last.ckpt, no temporary file left
    torch.load(kept / "checkpoints" / "epoch000.ckpt", map_location="cpu", weights_only=False)
    assert "no space left" in (kept / "run.log").read_text()

    resumed = run_cli(
        ["debug=smoke", "budget=0.5", "method=random", "test=false", "trainer.max_epochs=2"]
        + ["trainer.limit_val_batches=1"]
        + ["hydra.run.dir=kept", "ckpt_path=last"],
        tmp_path,
        cache_dir,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_results(kept)["run"]["resumed_from"].endswith("epoch000.ckpt")
