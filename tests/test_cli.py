"""The command line as a user meets it: real subprocesses, real run directories, one-line errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p3bench.cli import group_choices
from p3bench.errors import EXIT_INTERRUPTED

from .conftest import cli_env, find_run_dirs, read_results, run_cli

SMOKE = ["debug=smoke", "hydra.run.dir=run"]


@pytest.mark.slow
def test_default_pipeline_end_to_end(tmp_path: Path, cache_dir: Path):
    done = run_cli([*SMOKE, "trainer.max_epochs=2"], tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "run"
    results = read_results(run_dir)
    assert results["schema_version"] == 1 and results["status"] == "ok"
    assert results["run"]["method"] == "p3" and results["run"]["budget"] == 0.5
    selection = results["selection"]
    # p3 selects 200 examples (the budget) in each of the two rounds, scored by the model of that round
    assert selection["pool_size"] == 400 and 200 <= selection["n_selected"] <= 400
    assert [r["n"] for r in selection["rounds"]] == [200, 200]
    assert all(r["forward_tokens"] > 0 and r["diagnostics"]["admitted"] == 300 for r in selection["rounds"])
    assert results["compute"]["selection_forward_tokens"] == sum(
        r["forward_tokens"] for r in selection["rounds"]
    )
    assert results["compute"]["train_tokens"] > 0 and results["compute"]["epochs_completed"] == 2
    metrics = results["metrics"]
    assert 0.0 <= metrics["test/accuracy"] <= 1.0 and metrics["test/n_examples"] == 40
    assert {f"test/accuracy_level_{k}" for k in range(1, 6)} <= set(metrics)
    assert "val/loss" in metrics and "train/loss" in metrics
    rows = [json.loads(line) for line in (run_dir / "selection.jsonl").read_text().splitlines()]
    assert len(rows) == 400 and {r["round"] for r in rows} == {0, 1}
    predictions = (run_dir / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 40
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "csv" / "metrics.csv").is_file()
    assert "test acc" in done.stdout and str(run_dir.name) in done.stdout


@pytest.mark.slow
def test_same_seed_same_selection_different_seed_different(tmp_path: Path, cache_dir: Path):
    hashes = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        done = run_cli(
            [
                "debug=smoke",
                f"hydra.run.dir={name}",
                f"seed={seed}",
                "test=false",
                "trainer.limit_train_batches=1",
                "trainer.limit_val_batches=1",
            ],
            tmp_path,
            cache_dir,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        hashes[name] = read_results(tmp_path / name)["selection"]["ids_sha256"]
    assert hashes["a"] == hashes["b"] != hashes["c"]


def run_smoke_sweep(args: list[str], tmp_path: Path, cache_dir: Path):
    """A small multirun into ``tmp_path/sweep`` (no test evaluation, one validation batch)."""
    sweep = ["-m", "debug=smoke", "hydra.sweep.dir=sweep", "test=false", "trainer.limit_val_batches=1", *args]
    return run_cli(sweep, tmp_path, cache_dir, timeout=600)


@pytest.mark.slow
def test_sweep_runs_every_job_even_when_one_fails(tmp_path: Path, cache_dir: Path):
    done = run_smoke_sweep(["budget=0.5,1.5,0.2"], tmp_path, cache_dir)
    assert done.returncode != 0
    assert "budget=1.5 is out of range" in done.stderr
    finished = {
        read_results(d)["run"]["budget"]
        for d in find_run_dirs(tmp_path / "sweep")
        if (d / "results.json").exists()
    }
    assert finished == {0.5, 0.2}
    assert len(find_run_dirs(tmp_path / "sweep")) == 3


@pytest.mark.slow
@pytest.mark.parametrize("method", ["random", "p3"])
def test_resume_from_last_checkpoint_keeps_the_selection(method: str, tmp_path: Path, cache_dir: Path):
    args = ["debug=smoke", "hydra.run.dir=run", "test=false", f"method={method}"]
    first = run_cli(args, tmp_path, cache_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    before = read_results(tmp_path / "run")
    # the restored selection state is used (a resume with another seed is refused: tests/test_resume.py)
    resumed = run_cli([*args, "ckpt_path=last", "trainer.max_epochs=2"], tmp_path, cache_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = read_results(tmp_path / "run")
    rounds_before, rounds_after = before["selection"]["rounds"], after["selection"]["rounds"]
    assert rounds_after[0]["ids_sha256"] == rounds_before[0]["ids_sha256"]
    assert rounds_after[0]["seconds"] == rounds_before[0]["seconds"]  # restored, not selected again
    # a static method keeps its one selection; a dynamic one selects round 1 with the resumed model
    assert [r["round"] for r in rounds_after] == ([0] if method == "random" else [0, 1])
    if method == "random":
        assert after["selection"]["ids_sha256"] == before["selection"]["ids_sha256"]
    assert after["compute"]["epochs_completed"] == 2
    assert after["compute"]["train_tokens"] > before["compute"]["train_tokens"]
    assert after["run"]["resumed_from"].endswith("last.ckpt")


BAD_INPUTS = [
    (["method=randm"], "unknown method config 'randm'", "did you mean 'random'"),
    (["dataset=mathh"], "unknown dataset config 'mathh'", "did you mean 'math'"),
    (["model=tinyy"], "unknown model config 'tinyy'", "did you mean 'tiny'"),
    (["method.name=randomm"], "unknown method 'randomm'", "did you mean 'random'"),
    (["budget=0"], "budget=0 is out of range", "expected"),
    (["budget=-0.1"], "budget=-0.1 is out of range", "expected"),
    (["budget=1.5"], "budget=1.5 is out of range", "expected a fraction in (0, 1]"),
    (["budget=401"], "budget=401 exceeds the pool size 400", "expected a count <= 400"),
    (["regime=iso_tokens"], "regime='iso_tokens' is not supported", "iso_epoch, iso_compute"),
    (
        ["model=hf", "model.name_or_path=no-such-org/no-such-model"],
        "'no-such-org/no-such-model' cannot be loaded",
        "offline",
    ),
    (["ckpt_path=missing.ckpt"], "ckpt_path='missing.ckpt'", "expected a .ckpt file"),
]


@pytest.mark.parametrize(("args", "names_value", "expects"), BAD_INPUTS, ids=lambda v: str(v)[:30])
def test_bad_input_is_one_line_nonzero_and_writes_no_results(args, names_value, expects, tmp_path, cache_dir):
    done = run_cli([*SMOKE, *args], tmp_path, cache_dir)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("p3bench: error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert names_value in errors[0] and expects in errors[0]
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.rglob("results.json"))


GSM8K_SMOKE = [
    "dataset=gsm8k",
    "budget=0.5",  # a fraction of the small pool, whatever the default budget
    "dataset.params.val_size=2",
    "dataset.params.test_size=2",
    "dataset.max_length=64",
    "dataset.max_new_tokens=4",
    "model.tokenizer.vocab_size=300",
    "trainer.limit_train_batches=1",
]


def write_gsm8k_file(path: Path, bad_line: str | None) -> Path:
    rows = [
        json.dumps({"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"})
        for i in range(30)
    ]
    if bad_line is not None:
        rows.insert(1, bad_line)
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ('{"question": "no answer here"}', "line 2: record is missing required field 'answer'"),
        ('{"question": "broken", ', "line 2"),
    ],
)
def test_malformed_local_file_names_file_and_line(bad_line, expected, tmp_path: Path, cache_dir: Path):
    data = write_gsm8k_file(tmp_path / "train.jsonl", bad_line)
    done = run_cli(
        ["hydra.run.dir=run", *GSM8K_SMOKE, f"dataset.params.data_files={data}"], tmp_path, cache_dir
    )
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("p3bench: error:")]
    assert len(errors) == 1 and str(data) in errors[0] and expected in errors[0], done.stderr[-2000:]
    assert not list(tmp_path.rglob("results.json"))


@pytest.mark.slow
def test_skip_bad_records_skips_and_counts(tmp_path: Path, cache_dir: Path):
    data = write_gsm8k_file(tmp_path / "train.jsonl", '{"question": "no answer here"}')
    args = [
        "hydra.run.dir=run",
        *GSM8K_SMOKE,
        f"dataset.params.data_files={data}",
        "dataset.params.skip_bad=true",
        "test=false",
    ]
    done = run_cli(args, tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    results = read_results(tmp_path / "run")
    assert results["dataset"]["info"]["n_skipped"] == 1
    assert sum(results["dataset"]["sizes"].values()) == 30


def test_unknown_dataset_parameter_is_one_line(tmp_path: Path, cache_dir: Path):
    done = run_cli([*SMOKE, "+dataset.params.n_trian=10"], tmp_path, cache_dir)
    assert done.returncode != 0
    assert "dataset.params.n_trian is not a parameter of dataset 'synthetic_math'" in done.stderr
    assert "did you mean 'n_train'" in done.stderr


@pytest.mark.slow
def test_wandb_logs_offline_grouped_and_tagged(tmp_path: Path, cache_dir: Path):
    done = run_cli([*SMOKE, "logger=default", "test=false", "experiment_name=demo"], tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    offline_runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    # the config, group and tags live in the offline run's record log
    record_log = next(offline_runs[0].glob("run-*.wandb")).read_bytes()
    for expected in (b"experiment_name", b"demo", b"method:p3", b"dataset:synthetic_math", b"budget:0.5"):
        assert expected in record_log, expected
    assert (tmp_path / "run" / "csv" / "metrics.csv").is_file()


@pytest.mark.slow
def test_iso_compute_trains_every_budget_on_the_same_tokens(tmp_path: Path, cache_dir: Path):
    done = run_smoke_sweep(["method=random", "regime=iso_compute", "budget=0.25,1.0"], tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {r["run"]["budget"]: r for r in (read_results(d) for d in find_run_dirs(tmp_path / "sweep"))}
    small, whole = runs[0.25]["compute"], runs[1.0]["compute"]
    assert small["target_train_tokens"] == whole["target_train_tokens"] > 0
    for compute in (small, whole):
        # stops at the first step that reaches the target: at most one batch (32 x 96 tokens) past it
        assert (
            compute["target_train_tokens"]
            <= compute["train_tokens"]
            < compute["target_train_tokens"] + 32 * 96
        )
    assert small["epochs_completed"] >= 3 > whole["epochs_completed"]
    assert runs[0.25]["selection"]["n_selected"] == 100


def test_help_lists_config_groups_and_choices(tmp_path: Path, cache_dir: Path):
    done = run_cli(["--help"], tmp_path, cache_dir)
    assert done.returncode == 0
    for group in ("method", "dataset", "model", "experiment"):
        line = f"{group}: {', '.join(group_choices(group))}"
        assert line in done.stdout, done.stdout[:2000]
    for line in (
        "dataset: alpaca, apps, c4, corpus_files, dolly, gsm8k, gsm8k_instruct, gutenberg, instruction_transfer, math,",
        "model: hf, llama_113m, llama_1p3b, micro, tiny",
    ):
        assert line in done.stdout, done.stdout[:2000]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path: Path, cache_dir: Path):
    done = run_cli(
        [*SMOKE, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "logger=csv"],
        tmp_path,
        cache_dir,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = read_results(tmp_path / "run")
    assert results["compute"]["world_size"] == 2
    assert results["metrics"]["test/n_examples"] == 40  # the distributed sampler's padding is removed
    ids = [
        json.loads(line)["id"] for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()
    ]
    assert len(ids) == len(set(ids)) == 40
    # both processes' tokens are counted: close to one process's count over the same selection (the
    # sharded sampler drops at most one batch), not half of it
    single = run_cli(["debug=smoke", "hydra.run.dir=single", "test=false"], tmp_path, cache_dir)
    assert single.returncode == 0, single.stderr[-3000:]
    single_tokens = read_results(tmp_path / "single")["compute"]["train_tokens"]
    assert 0.75 * single_tokens < results["compute"]["train_tokens"] <= single_tokens


def start_cli(args: list[str], cwd: Path, cache_dir: Path) -> subprocess.Popen:
    """``python -m p3bench ARGS`` started in the background, with the environment of :func:`run_cli`."""
    return subprocess.Popen(
        [sys.executable, "-m", "p3bench", *args],
        cwd=cwd,
        env=cli_env(cache_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def signal_when(process: subprocess.Popen, path: Path, signum: int) -> tuple[int, str]:
    """Send ``signum`` once ``path`` exists (the run reached that stage); the exit code and stderr."""
    deadline = time.monotonic() + 240
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=240)
    return process.returncode, stderr


@pytest.mark.slow
def test_ctrl_c_during_start_up_exits_130_without_a_traceback(tmp_path: Path, cache_dir: Path):
    # the run directory's config is written just before the run imports and builds its model
    process = start_cli(["debug=smoke", "budget=0.5", "hydra.run.dir=run"], tmp_path, cache_dir)
    code, stderr = signal_when(process, tmp_path / "run" / ".hydra" / "config.yaml", signal.SIGINT)
    assert code == EXIT_INTERRUPTED, stderr[-3000:]
    assert "p3bench: interrupted by SIGINT" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_training_exits_130_and_resumes(signum: int, tmp_path: Path, cache_dir: Path):
    args = [*SMOKE, "budget=0.5", "method=random", "test=false", "trainer.limit_val_batches=1"]
    process = start_cli([*args, "trainer.max_epochs=200"], tmp_path, cache_dir)
    code, stderr = signal_when(process, tmp_path / "run" / "checkpoints" / "epoch000.ckpt", signum)
    name = signal.Signals(signum).name
    assert code == EXIT_INTERRUPTED, stderr[-3000:]
    assert f"p3bench: interrupted by {name}" in stderr and "Traceback" not in stderr
    assert f"run interrupted by {name}" in (tmp_path / "run" / "run.log").read_text()
    resumed = run_cli([*args, "trainer.max_epochs=1", "ckpt_path=last"], tmp_path, cache_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_results(tmp_path / "run")["compute"]["epochs_completed"] >= 1


@pytest.mark.slow
def test_user_error_in_a_run_goes_to_its_run_log(tmp_path: Path, cache_dir: Path):
    """budget=401 is only known to exceed the pool once the data is loaded in the run: the report lists the
    run as failed, with the one line as its reason."""
    from p3bench.report.runs import FAILED, load_run

    done = run_cli([*SMOKE, "method=random", "budget=401"], tmp_path, cache_dir)
    assert done.returncode == 2
    (line,) = [line for line in done.stderr.splitlines() if line.strip()]
    record = load_run(tmp_path / "run")
    assert record.status == FAILED and line.removeprefix("p3bench: error: ") in record.problem
