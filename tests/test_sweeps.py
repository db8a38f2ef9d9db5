"""Sweeps on clusters: the launcher configs compose, a finished run leaves a completion marker whose
fingerprint covers what the run computes and nothing else, a relaunched sweep skips the jobs that finished
with the same settings and reruns (or resumes) the others, and the report says which is which."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from datetime import datetime
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from p3bench.cli import CONFIG_DIR
from p3bench.report import build_report, load_runs
from p3bench.report.run_status import relaunch_action, run_status_table, status_word
from p3bench.sweep_ddp import job_child_command
from p3bench.sweeps import (
    COMPLETION_FILE,
    RESUME,
    RUN,
    SKIP,
    apply_relaunch_decision,
    config_fingerprint,
    read_completion_marker,
    relaunch_decision,
    write_completion_marker,
)

from .conftest import compose_config, read_results, run_cli

#: each launcher config, the plugin module it needs, and the class it builds
LAUNCHERS = {
    "local_joblib": ("hydra_plugins.hydra_joblib_launcher", "JoblibLauncher"),
    "local_submitit": ("hydra_plugins.hydra_submitit_launcher", "LocalLauncher"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "SlurmLauncher"),
    "ray_cluster": ("hydra_plugins.hydra_ray_launcher", "RayLauncher"),
}


def plugin_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def compose_with_hydra(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_configs_compose(name: str):
    module, cls = LAUNCHERS[name]
    if not plugin_installed(module):
        pytest.skip(f"{module} is not installed")
    assert (CONFIG_DIR / "hydra" / "launcher" / f"{name}.yaml").is_file()
    cfg = compose_with_hydra([f"hydra/launcher={name}", "trainer=ddp", "trainer.devices=4"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.rsplit(".", 1)[-1] == cls
    if name == "slurm":
        # one SLURM task per device of a DDP job, as Lightning's SLURMEnvironment requires
        assert launcher.tasks_per_node == 4 and launcher.gpus_per_node == 4 and launcher.nodes == 1
        assert compose_with_hydra(["hydra/launcher=slurm", "+trainer.num_nodes=2"]).hydra.launcher.nodes == 2
    if name == "local_submitit":
        assert launcher.tasks_per_node == 1  # Lightning starts a local job's other processes itself
    if name == "local_joblib":
        assert launcher.n_jobs == 2
    if name in ("slurm", "local_submitit"):
        built = instantiate(launcher)  # what Hydra builds from it (submitit's launchers only store them)
        assert built.params["tasks_per_node"] == launcher.tasks_per_node


def test_every_launcher_config_is_tested():
    shipped = {p.stem for p in (CONFIG_DIR / "hydra" / "launcher").glob("*.yaml")}
    assert shipped == set(LAUNCHERS)


# --- the fingerprint and the marker ----------------------------------------------------------------------------
@pytest.fixture()
def base_cfg(tmp_path: Path, cache_dir: Path):
    return compose_config(["debug=smoke", "method=random"], tmp_path / "run", cache_dir)


def with_overrides(overrides: list[str], tmp_path: Path, cache_dir: Path, run: str = "run"):
    return compose_config(["debug=smoke", "method=random", *overrides], tmp_path / run, cache_dir)


@pytest.mark.parametrize(
    "overrides",
    [
        ["logger=none"],
        ["trainer.enable_progress_bar=false"],
        ["progress=false"],
        ["ckpt_path=last"],
        ["callbacks.model_checkpoint.every_n_epochs=2"],
        ["loader.num_workers=1"],
        ["paths.cache_dir=/elsewhere"],
    ],
)
def test_fingerprint_ignores_what_does_not_change_the_computation(
    overrides: list[str], base_cfg, tmp_path: Path, cache_dir: Path
):
    other = with_overrides(overrides, tmp_path, cache_dir, run="elsewhere")
    assert config_fingerprint(other) == config_fingerprint(base_cfg)


@pytest.mark.parametrize(
    "overrides",
    [
        ["seed=1"],
        ["budget=0.3"],
        ["budget=1"],  # a count, not the fraction 1.0
        ["trainer.max_epochs=2"],
        ["test=false"],
        ["test_sampling.n=2"],
        ["model.optimizer.lr=0.01"],
        ["trainer=ddp"],
        ["method=full"],
    ],
)
def test_fingerprint_covers_what_changes_the_computation(
    overrides: list[str], base_cfg, tmp_path: Path, cache_dir: Path
):
    other = with_overrides(overrides, tmp_path, cache_dir)
    assert config_fingerprint(other) != config_fingerprint(base_cfg)


def test_budget_count_and_fraction_differ(tmp_path: Path, cache_dir: Path):
    one = with_overrides(["budget=1"], tmp_path, cache_dir)
    fraction = with_overrides(["budget=1.0"], tmp_path, cache_dir)
    assert config_fingerprint(one) != config_fingerprint(fraction)


#: the least results.json the report reads as a finished run
FINISHED_RESULTS = {"status": "ok", "run": {"seed": 0}, "selection": {}, "metrics": {}, "compute": {}}


def fake_finished_run(run_dir: Path, cfg, value: float = 0.25) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(FINISHED_RESULTS))
    write_completion_marker(run_dir, cfg, value, ["seed=0"])


def fake_checkpoint(run_dir: Path, step: int = 3) -> Path:
    path = run_dir / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "global_step": step}, path)
    return path


def test_marker_is_written_whole_and_read_back(base_cfg, tmp_path: Path):
    run_dir = tmp_path / "run"
    fake_finished_run(run_dir, base_cfg, 0.25)
    marker = read_completion_marker(run_dir)
    assert marker["config_sha256"] == config_fingerprint(base_cfg)
    assert marker["value"] == 0.25 and marker["overrides"] == ["seed=0"]
    datetime.fromisoformat(marker["finished_at"])
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    (run_dir / COMPLETION_FILE).write_text('{"config_sha256": ')  # torn or foreign: not a marker
    assert read_completion_marker(run_dir) is None


def test_finished_with_the_same_config_is_skipped(base_cfg, tmp_path: Path, cache_dir: Path):
    run_dir = tmp_path / "run"
    fake_finished_run(run_dir, base_cfg, 0.5)
    fake_checkpoint(run_dir)
    decision = relaunch_decision(run_dir, base_cfg)
    assert decision.action == SKIP and decision.value == 0.5
    # the same settings written elsewhere, with another logger: still the same run
    assert relaunch_decision(run_dir, with_overrides(["logger=none"], tmp_path, cache_dir)).action == SKIP


def test_marker_without_results_is_not_finished(base_cfg, tmp_path: Path):
    run_dir = tmp_path / "run"
    fake_finished_run(run_dir, base_cfg)
    (run_dir / "results.json").unlink()
    assert relaunch_decision(run_dir, base_cfg).action == RUN


def test_other_settings_resume_from_the_checkpoint_or_run(base_cfg, tmp_path: Path, cache_dir: Path):
    run_dir = tmp_path / "run"
    fake_finished_run(run_dir, base_cfg)
    longer = with_overrides(["trainer.max_epochs=3"], tmp_path, cache_dir)
    decision = relaunch_decision(run_dir, longer)
    assert decision.action == RUN and "other settings" in decision.reason
    fake_checkpoint(run_dir)
    decision = relaunch_decision(run_dir, longer)
    assert decision.action == RESUME
    apply_relaunch_decision(decision, longer)
    assert longer.ckpt_path == "last"
    # the marker stays with the results it was written for, until the run replaces both
    assert read_completion_marker(run_dir)["config_sha256"] == config_fingerprint(base_cfg)


def test_results_replaced_after_the_marker_are_not_skipped(base_cfg, tmp_path: Path):
    run_dir = tmp_path / "run"
    fake_finished_run(run_dir, base_cfg)
    assert relaunch_decision(run_dir, base_cfg).action == SKIP
    (run_dir / "results.json").write_text(json.dumps({**FINISHED_RESULTS, "metrics": {"x": 1.0}}))
    assert relaunch_decision(run_dir, base_cfg).action == RUN


def test_unfinished_run_resumes_and_a_damaged_checkpoint_is_not_resumed(base_cfg, tmp_path: Path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert relaunch_decision(run_dir, base_cfg).action == RUN
    path = fake_checkpoint(run_dir)
    assert relaunch_decision(run_dir, base_cfg).action == RESUME
    path.write_bytes(b"truncated")
    assert relaunch_decision(run_dir, base_cfg).action == RUN


def test_a_given_ckpt_path_is_kept(tmp_path: Path, cache_dir: Path):
    cfg = with_overrides(["ckpt_path=/some/epoch001.ckpt"], tmp_path, cache_dir)
    run_dir = tmp_path / "run"
    fake_checkpoint(run_dir)
    decision = relaunch_decision(run_dir, cfg)
    assert decision.action == RUN
    apply_relaunch_decision(decision, cfg)
    assert cfg.ckpt_path == "/some/epoch001.ckpt"


def test_only_rank_zero_writes_the_marker(base_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 1, raising=False)
    assert write_completion_marker(tmp_path, base_cfg, 0.1) is None
    assert not (tmp_path / COMPLETION_FILE).exists()


# --- the child command of a DDP sweep job ----------------------------------------------------------------------
def test_child_command_runs_this_job_only():
    run_dir = "/runs/sweep x/0_random_b0.5_s0,1 'q'"
    command = job_child_command(
        ["debug=smoke", "seed=0", "ckpt_path=/old.ckpt", "trainer=ddp"],
        [
            "hydra.sweep.dir=sweep",
            "hydra/launcher=local_joblib",
            "hydra.launcher.n_jobs=2",
            "hydra.mode=MULTIRUN",
        ]
        + ["hydra.job.chdir=false", "hydra.verbose=true"],
        run_dir,
        local_rank=1,
        ckpt_path="last",
    )
    assert command[:3] == [sys.executable, "-m", "p3bench"]
    overrides = command[3:]
    assert "-m" not in overrides and "--multirun" not in overrides
    parsed = {o.key_or_group: o for o in OverridesParser.create().parse_overrides(overrides)}
    assert parsed["hydra.run.dir"].value() == run_dir  # quoted: spaces, commas and quotes survive
    assert parsed["ckpt_path"].value() == "last"
    assert parsed["seed"].value() == 0 and parsed["hydra.output_subdir"].value() is None
    assert parsed["hydra.job.name"].value() == "train_ddp_process_1"
    assert {"hydra.job.chdir", "hydra.verbose"} <= set(parsed)
    assert not {"hydra.sweep.dir", "hydra/launcher", "hydra.launcher.n_jobs", "hydra.mode"} & set(parsed)
    assert all(not o.is_sweep_override() for o in parsed.values())
    assert [o for o in overrides if o.startswith("ckpt_path=")] == ["ckpt_path='last'"]


def test_child_command_drops_ckpt_path_when_the_job_has_none():
    command = job_child_command(["seed=0", "ckpt_path=last"], [], "/r", local_rank=1, ckpt_path=None)
    assert not [o for o in command if o.startswith("ckpt_path")]


# --- the report ------------------------------------------------------------------------------------------------
def test_report_says_finished_failed_unfinished(base_cfg, tmp_path: Path):
    sweep = tmp_path / "sweep"
    finished, failed, unfinished, old = (sweep / f"{i}_run" for i in range(4))
    fake_finished_run(finished, base_cfg)
    for run_dir in (failed, unfinished, old):
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml({"seed": 0}))
    (failed / "run.log").write_text(
        "[2026][p3bench][ERROR] - run failed: p3bench: error: budget=7 is too big\n"
    )
    fake_checkpoint(unfinished)
    (old / "results.json").write_text(json.dumps(FINISHED_RESULTS))  # finished before markers existed
    records = {r.path.name: r for r in load_runs([sweep])}
    assert status_word(records["0_run"]) == "finished"
    assert relaunch_action(records["0_run"]).startswith("skipped")
    assert status_word(records["1_run"]) == "failed" and "budget=7 is too big" in records["1_run"].problem
    assert relaunch_action(records["1_run"]) == "runs again"
    assert status_word(records["2_run"]) == "unfinished"
    assert relaunch_action(records["2_run"]) == "resumes from its last checkpoint"
    assert status_word(records["3_run"]) == "finished"
    assert relaunch_action(records["3_run"]).startswith("runs again (no completion marker")
    table = run_status_table(list(records.values()))
    assert table[0].startswith("1 failed, 2 finished, 1 unfinished")
    (unfinished / "checkpoints" / "last.ckpt").write_bytes(b"truncated")  # a relaunch cannot resume from it
    assert relaunch_action(load_runs([unfinished])[0]) == "runs again"
    fake_checkpoint(old)  # a finished run without a marker, with a checkpoint: a relaunch resumes it
    assert relaunch_action(load_runs([old])[0]).startswith("resumes from its last checkpoint (no completion")
    assert sum(line.startswith(f"| {sweep}") for line in table) == 4


# --- through the command line ----------------------------------------------------------------------------------
SWEEP = [
    "-m",
    "debug=smoke",
    "method=random",
    "seed=0,1",
    "test=false",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "hydra.sweep.dir=sweep",
]


def job_dirs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))


def skipped_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "skipped: finished with the same config" in line]


@pytest.mark.slow
def test_relaunch_skips_finished_and_reruns_the_rest(tmp_path: Path, cache_dir: Path):
    done = run_cli(SWEEP, tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = job_dirs(tmp_path / "sweep")
    assert [p.name for p in jobs] == ["0_random_b0.5_s0", "1_random_b0.5_s1"]
    assert all((p / COMPLETION_FILE).is_file() for p in jobs)
    before = {p: (p / "results.json").read_bytes() for p in jobs}

    # a finished sweep relaunched: nothing runs
    again = run_cli(SWEEP, tmp_path, cache_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(skipped_lines(again.stdout + again.stderr)) == 2
    assert {p: (p / "results.json").read_bytes() for p in jobs} == before

    # job 1 did not finish (no marker, no results): it alone runs, resuming from its last checkpoint
    (jobs[1] / COMPLETION_FILE).unlink()
    (jobs[1] / "results.json").unlink()
    report = build_report([tmp_path / "sweep"], tmp_path / "report", make_plots=False)
    assert f"| {jobs[1]} | unfinished | resumes from its last checkpoint |" in report.markdown
    assert f"| {jobs[0]} | finished | skipped (same settings) |" in report.markdown
    third = run_cli(SWEEP, tmp_path, cache_dir)
    assert third.returncode == 0, third.stderr[-3000:]
    assert [line.split("(")[-1] for line in skipped_lines(third.stdout + third.stderr)] == [f"{jobs[0]})"]
    assert (jobs[0] / "results.json").read_bytes() == before[jobs[0]]
    resumed = read_results(jobs[1])
    assert resumed["run"]["resumed_from"].endswith("last.ckpt")
    assert (jobs[1] / COMPLETION_FILE).is_file()

    # more epochs change what the runs compute: both run again, each continuing from its checkpoint
    longer = run_cli([*SWEEP, "trainer.max_epochs=2"], tmp_path, cache_dir)
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert skipped_lines(longer.stdout + longer.stderr) == []
    for job in jobs:
        results = read_results(job)
        assert results["compute"]["epochs_completed"] == 2 and results["run"]["resumed_from"]
    assert len(job_dirs(tmp_path / "sweep")) == 2
    finished = {p: (p / "results.json").read_bytes() for p in jobs}

    # another learning rate cannot resume these checkpoints: one line per job naming the key, nothing lost
    other = run_cli([*SWEEP, "trainer.max_epochs=2", "model.optimizer.lr=0.01"], tmp_path, cache_dir)
    assert other.returncode == 2
    errors = [line for line in other.stderr.splitlines() if line.startswith("p3bench: error: job")]
    assert len(errors) == 2 and all("model.optimizer.lr=0.01" in e and "hydra.sweep.dir" in e for e in errors)
    assert {p: (p / "results.json").read_bytes() for p in jobs} == finished
    back = run_cli([*SWEEP, "trainer.max_epochs=2"], tmp_path, cache_dir)
    assert back.returncode == 0 and len(skipped_lines(back.stdout + back.stderr)) == 2


def test_marker_fingerprint_is_the_jobs_own_config(tmp_path: Path, cache_dir: Path):
    """The marker a run leaves is computed from the config the task received (no hydra node, resolved)."""
    cfg = with_overrides(["seed=3"], tmp_path, cache_dir)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "moved")
    fake_finished_run(tmp_path / "run", cfg)
    assert relaunch_decision(tmp_path / "run", with_overrides(["seed=3"], tmp_path, cache_dir)).action == SKIP


def test_sweep_job_processes_patches_and_restores(tmp_path: Path, cache_dir: Path, monkeypatch):
    import lightning_fabric.strategies.launchers.subprocess_script as fabric_launcher
    import pytorch_lightning.strategies.launchers.subprocess_script as pl_launcher
    import torch.distributed as dist

    from p3bench.sweep_ddp import sweep_job_processes

    compose_config(["debug=smoke", "seed=4"], tmp_path / "run", cache_dir)  # sets Hydra's job config
    original = pl_launcher._hydra_subprocess_cmd
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("MASTER_PORT", "1234")
    with sweep_job_processes(str(tmp_path / "run"), "last"):
        command, cwd = pl_launcher._hydra_subprocess_cmd(1)
        assert fabric_launcher._hydra_subprocess_cmd(1) == (command, cwd)
        assert command[1:3] == ["-m", "p3bench"] and "seed=4" in command and "ckpt_path='last'" in command
        assert f"hydra.run.dir='{tmp_path / 'run'}'" in command and cwd == str(Path.cwd())
        # what Lightning's launcher sets for its children, and the job's process group
        monkeypatch.setenv("LOCAL_RANK", "0")
        monkeypatch.setenv("MASTER_PORT", "5678")
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    assert pl_launcher._hydra_subprocess_cmd is original
    assert "LOCAL_RANK" not in os.environ and os.environ["MASTER_PORT"] == "1234"
    assert not dist.is_initialized()
