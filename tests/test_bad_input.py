"""Bad input as a user types it: one line on stderr naming the setting, exit code 2, and nothing written
(no run directory at all when the check can be made before Hydra creates it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from p3bench.config_schema import composition_error_message, validate_config
from p3bench.errors import ConfigError

from .conftest import compose_config, run_cli

SMOKE = ["debug=smoke", "budget=0.5", "test=false", "hydra.run.dir=run"]


def only_error_line(done: subprocess.CompletedProcess) -> str:
    """The single line on stderr, which must be the command's error line."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("p3bench: error: "), done.stderr[-3000:]
    return lines[0]


def written(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


#: (arguments, fragments of the one line): checked before the run directory exists, so nothing is written
BEFORE_THE_RUN_DIRECTORY = [
    (["seed=abc"], ["seed=abc", "expected an integer"]),
    (["seed=1.5"], ["seed=1.5", "expected an integer"]),
    (["seed=-1"], ["seed=-1", "expected an integer >= 0"]),
    (["loader.batch_size=0"], ["loader.batch_size=0", "expected an integer >= 1"]),
    (["loader.length_grouping=0"], ["loader.length_grouping=0", "expected an integer >= 1"]),
    (["loader.num_workers=-1"], ["loader.num_workers=-1", "expected an integer >= 0"]),
    (["trainer.max_epochs=-1"], ["trainer.max_epochs=-1", "expected an integer >= 1"]),
    (["trainer.max_epochs=abc"], ["trainer.max_epochs='abc'", "expected an integer >= 1"]),
    (["trainer.max_epochs=0"], ["trainer.max_epochs=0", "expected an integer >= 1"]),
    (["test_sampling.n=-1"], ["test_sampling.n=-1", "expected an integer >= 0"]),
    (["foo=1"], ["foo is not a config key", "+foo=1"]),
    (["seed=1,2"], ["seed=1,2", "add -m"]),
    (["hydra.run.dir=/proc/p3bench-run"], ["hydra.run.dir=/proc/p3bench-run cannot be"]),
    (["budget=1.5"], ["budget=1.5 is out of range", "expected a fraction in (0, 1]"]),
]


@pytest.mark.parametrize(("args", "fragments"), BEFORE_THE_RUN_DIRECTORY, ids=lambda v: " ".join(v)[:40])
def test_bad_setting_is_one_line_exit_2_and_writes_nothing(args, fragments, tmp_path: Path, cache_dir: Path):
    done = run_cli([*SMOKE, *args], tmp_path, cache_dir)
    assert done.returncode == 2, done.stderr[-3000:]
    line = only_error_line(done)
    assert all(fragment in line for fragment in fragments), line
    assert written(tmp_path) == []


#: found after the data or the method is loaded, still before the run directory exists
@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["+method.bogus=1"], ["method.bogus is not an option of method 'p3'", "expected some of"]),
        (["dataset.params.n_train=0"], ["dataset.params.n_train=0", "no training examples"]),
    ],
    ids=lambda v: " ".join(v)[:40],
)
def test_bad_option_or_data_is_one_line_and_writes_nothing(args, fragments, tmp_path: Path, cache_dir: Path):
    done = run_cli([*SMOKE, *args], tmp_path, cache_dir)
    assert done.returncode == 2, done.stderr[-3000:]
    line = only_error_line(done)
    assert all(fragment in line for fragment in fragments), line
    assert written(tmp_path) == []


def test_output_directory_through_a_file_is_one_line(tmp_path: Path, cache_dir: Path):
    (tmp_path / "a_file").write_text("")
    done = run_cli(["debug=smoke", "hydra.run.dir=a_file/run"], tmp_path, cache_dir)
    assert done.returncode == 2
    assert "a_file is a file: expected a directory path" in only_error_line(done)
    assert written(tmp_path) == ["a_file"]


@pytest.mark.slow
@pytest.mark.parametrize("content", [b"", b"PK\x03\x04truncated"], ids=["empty", "truncated"])
def test_corrupt_or_empty_checkpoint_is_one_line(content: bytes, tmp_path: Path, cache_dir: Path):
    (tmp_path / "bad.ckpt").write_bytes(content)
    done = run_cli([*SMOKE, f"ckpt_path={tmp_path / 'bad.ckpt'}"], tmp_path, cache_dir)
    assert done.returncode == 2, done.stderr[-3000:]
    line = only_error_line(done)
    assert f"checkpoint {tmp_path / 'bad.ckpt'} is damaged" in line
    assert "no intact checkpoint sits beside it" in line
    assert written(tmp_path) == ["bad.ckpt"]


@pytest.mark.slow
@pytest.mark.parametrize(("dataset", "suffix"), [("gsm8k", ".jsonl"), ("tinyshakespeare", ".txt")])
def test_empty_data_file_is_named(dataset: str, suffix: str, tmp_path: Path, cache_dir: Path):
    empty = tmp_path / f"train{suffix}"
    empty.write_text("\n")
    done = run_cli(
        [f"dataset={dataset}", f"dataset.params.data_files={empty}", "hydra.run.dir=run"], tmp_path, cache_dir
    )
    assert done.returncode == 2, done.stderr[-3000:]
    line = only_error_line(done)
    assert f"dataset.params.data_files: {empty} is empty" in line
    assert written(tmp_path) == [empty.name]


@pytest.mark.slow
def test_option_a_method_rejects_names_the_key_and_goes_to_run_log(tmp_path: Path, cache_dir: Path):
    """P3 checks its pace options when the method is built, after Hydra made the run directory: the line
    goes to the run's run.log too, where the report finds why the run failed."""
    from p3bench.report.runs import FAILED, load_run

    done = run_cli([*SMOKE, "method=p3", "method.pace.start=2"], tmp_path, cache_dir)
    assert done.returncode == 2, done.stderr[-3000:]
    line = only_error_line(done)
    assert "method.pace.start=2 is invalid for method 'p3'" in line and "(0, 1]" in line
    run_dir = tmp_path / "run"
    assert not (run_dir / "results.json").exists() and not (run_dir / "checkpoints").exists()
    assert line.removeprefix("p3bench: error: ") in (run_dir / "run.log").read_text()
    record = load_run(run_dir)
    assert record.status == FAILED and "method.pace.start=2" in record.problem


def test_type_errors_fail_where_the_config_is_composed(tmp_path: Path, cache_dir: Path):
    from hydra.errors import HydraException

    with pytest.raises(HydraException) as caught:
        compose_config(["seed=1.5"], tmp_path, cache_dir)
    assert composition_error_message(caught.value).startswith("seed=1.5 is invalid: expected an integer")
    cfg = compose_config(["loader.batch_size=3"], tmp_path, cache_dir)
    validate_config(cfg)  # the shipped defaults pass
    assert cfg.loader.batch_size == 3


def test_no_epoch_limit_only_with_a_step_limit(tmp_path: Path, cache_dir: Path):
    """``trainer.max_epochs=-1`` is Lightning's "no epoch limit": accepted when ``trainer.max_steps`` ends
    the run (the IR-DRO experiments), refused when nothing would (or when it scales iso_compute)."""
    validate_config(compose_config(["trainer.max_epochs=-1", "trainer.max_steps=5"], tmp_path, cache_dir))
    for overrides in (
        ["trainer.max_epochs=-1"],
        ["trainer.max_epochs=-1", "trainer.max_steps=5", "regime=iso_compute"],
    ):
        with pytest.raises(ConfigError, match=r"trainer.max_epochs=-1 is invalid: expected an integer >= 1"):
            validate_config(compose_config(overrides, tmp_path, cache_dir))
