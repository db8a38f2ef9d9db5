"""Selection tracking: per-round selection metrics in every logger, and what a run leaves in its offline wandb
run (config, group, tags, ``summary/*``, selection tables, the selection artifact), read back from the run's
``.wandb`` transaction log."""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from wandb.proto import wandb_internal_pb2

from p3bench.data.example import Example
from p3bench.methods.base import RoundRecord
from p3bench.results import summary_metrics
from p3bench.run import train_and_evaluate
from p3bench.tracking import (
    artifact_name,
    composition_shares,
    log_run_to_wandb,
    numeric_diagnostics,
    round_metrics,
    selection_tables,
)

from .conftest import compose_config, read_results, run_cli

# a run in seconds: 100 pool examples, 50 a round; p3 with TF-IDF for its DPP (no embedding model)
SMALL = [
    "debug=smoke",
    "dataset.params.n_train=100",
    "dataset.params.n_val=20",
    "dataset.params.n_test=20",
    "loader.eval_batch_size=20",
]
SMALL_P3 = [*SMALL, "method=p3", "method.dpp.embedder=tfidf"]


# the .wandb transaction log ----------------------------------------------------------------------------------
# A LevelDB-style log: a 7-byte file header (":W&B", magic 0xBEE1, version), then 32 KiB blocks of chunks,
# each with a 7-byte header (crc32 of the type byte and data, length, type: 1 full, 2 first, 3 middle, 4 last)
# and a protobuf `Record`; a block's tail shorter than a chunk header is zero padding.
_BLOCK, _CHUNK_HEADER = 32 * 1024, 7


def read_wandb_records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), data[:7]
    records, pending, pos = [], b"", 7
    while pos + _CHUNK_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER:
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + _CHUNK_HEADER])
        if (crc, length, kind) == (0, 0, 0):  # padding to the end of the block
            pos += left
            continue
        payload = data[pos + _CHUNK_HEADER : pos + _CHUNK_HEADER + length]
        assert zlib.crc32(payload, zlib.crc32(bytes([kind]))) == crc, f"bad checksum at byte {pos}"
        pos += _CHUNK_HEADER + length
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _items(update: Any) -> dict[Any, Any]:
    """A config, summary or history update as {key: value}; a nested key (a table's fields) as a tuple."""
    out: dict[Any, Any] = {}
    for item in update:
        key = item.key or (item.nested_key[0] if len(item.nested_key) == 1 else tuple(item.nested_key))
        out[key] = json.loads(item.value_json)
    return out


class OfflineRun:
    """What an offline wandb run recorded: run settings, config, summary, history rows, artifacts."""

    def __init__(self, run_dir: Path) -> None:
        (self.dir,) = (run_dir / "wandb").glob("offline-run-*")
        records = read_wandb_records(next(self.dir.glob("run-*.wandb")))
        kinds = [r.WhichOneof("record_type") for r in records]
        self.run = next(r.run for r, k in zip(records, kinds, strict=True) if k == "run")
        self.config: dict[str, Any] = {}
        self.summary: dict[Any, Any] = {}
        self.history: list[dict[Any, Any]] = []
        self.artifacts = []
        for record, kind in zip(records, kinds, strict=True):
            if kind == "config":
                self.config.update(_items(record.config.update))
            elif kind == "summary":
                self.summary.update(_items(record.summary.update))
            elif kind == "history":
                self.history.append(_items(record.history.item))
            elif kind == "artifact":
                self.artifacts.append(record.artifact)


# end to end --------------------------------------------------------------------------------------------------
@pytest.fixture
def offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """wandb offline and quiet, with its directories under ``tmp_path`` (the CLI's subprocess inherits these)."""
    for name, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": tmp_path / "wandb_dir",
        "WANDB_DATA_DIR": tmp_path / "wandb_data",
        "WANDB_CACHE_DIR": tmp_path / "wandb_cache",
        "WANDB_CONFIG_DIR": tmp_path / "wandb_config",
    }.items():
        monkeypatch.setenv(name, str(value))


@pytest.mark.slow
def test_wandb_run_has_config_grouping_round_metrics_summary_tables_and_artifact(
    tmp_path: Path, cache_dir: Path, offline_wandb: None
):
    args = [*SMALL_P3, "hydra.run.dir=run", "logger=wandb", "trainer.max_epochs=3", "experiment_name=track"]
    done = run_cli(args, tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "run"
    results = read_results(run_dir)
    rounds = results["selection"]["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    run = OfflineRun(run_dir)

    # grouped by experiment, tagged by method, dataset and budget, named after them
    assert run.run.run_group == "track" and run.run.project == "p3bench"
    assert {"method:p3", "dataset:synthetic_math", "budget:0.5"} <= set(run.run.tags)
    assert run.run.display_name == "p3-synthetic_math-b0.5-s0"
    # the resolved config
    assert run.config["method"]["name"] == "p3" and run.config["dataset"]["name"] == "synthetic_math"
    assert run.config["budget"] == 0.5 and run.config["seed"] == 0
    assert run.config["experiment_name"] == "track"

    # one selection/* row per round, at the step the round started training, in Lightning's step order
    steps = [row["trainer/global_step"] for row in run.history if "trainer/global_step" in row]
    assert steps == sorted(steps)
    per_round = [row for row in run.history if "selection/round" in row]
    assert [row["selection/round"] for row in per_round] == [0, 1, 2]
    for row, r in zip(per_round, rounds, strict=True):
        assert row["trainer/global_step"] == r["global_step"]
        assert row["selection/n"] == r["n"] == 50 and row["selection/fraction"] == 0.5
        assert row["selection/forward_tokens"] == r["forward_tokens"] > 0
        assert row["selection/pace_threshold"] == pytest.approx(r["diagnostics"]["pace_threshold"])
        assert row["selection/admitted_fraction"] == pytest.approx(r["diagnostics"]["admitted_fraction"])
        composition = r["composition"]
        for level, count in composition["per_level"].items():
            assert row[f"selection/level_{level}_share"] == pytest.approx(count / r["n"])
        assert row["selection/share_noisy"] == pytest.approx(composition["noisy"] / r["n"])
        assert row["selection/share_duplicate"] == pytest.approx(composition["duplicate_copies"] / r["n"])
    assert "selection/jaccard_previous_round" in per_round[1]

    # the headline numbers under the names shared by every method
    expected = summary_metrics(results)
    assert expected["quality_metric"] == "test/accuracy"
    assert run.summary["summary/quality"] == pytest.approx(results["metrics"]["test/accuracy"])
    assert run.summary["summary/data_fraction"] == pytest.approx(results["selection"]["fraction"])
    for name, value in expected.items():
        assert run.summary[f"summary/{name}"] == pytest.approx(value), name

    # the selection tables, logged once, written into the run's media files
    (tables_row,) = [row for row in run.history if ("selection/composition", "_type") in row]
    for key, columns in (
        ("selection/composition", ["round", "kind", "category", "count", "share"]),
        ("selection/defects", ["round", "n", "noisy", "junk", "duplicate_copies", "in_duplicate_group"]),
        ("selection/rounds", ["round", "epoch", "global_step", "n", "fraction", "forward_tokens"]),
    ):
        assert tables_row[(key, "_type")] == "table-file"
        table = json.loads((run.dir / "files" / tables_row[(key, "path")]).read_text())
        assert table["columns"][: len(columns)] == columns, key
        assert len(table["data"]) == tables_row[(key, "nrows")]
    composition_table = json.loads(
        (run.dir / "files" / tables_row[("selection/composition", "path")]).read_text()
    )
    levels = {(row[0], row[2]): row[3] for row in composition_table["data"] if row[1] == "level"}
    assert levels == {(r["round"], k): v for r in rounds for k, v in r["composition"]["per_level"].items()}
    rounds_table = json.loads((run.dir / "files" / tables_row[("selection/rounds", "path")]).read_text())
    assert [row[:4] for row in rounds_table["data"]] == [
        [r["round"], r["epoch"], r["global_step"], r["n"]] for r in rounds
    ]
    assert "pace_threshold" in rounds_table["columns"]

    # the selection file as an artifact, with what identifies the selection
    (artifact,) = [a for a in run.artifacts if a.type == "selection"]
    assert artifact.name == "selection-track-p3-synthetic_math-b0.5-s0"
    metadata = json.loads(artifact.metadata)
    assert metadata["ids_sha256"] == results["selection"]["ids_sha256"]
    assert metadata["n_selected"] == results["selection"]["n_selected"]
    assert (metadata["method"], metadata["budget"], metadata["seed"]) == ("p3", 0.5, 0)
    entries = {entry.path: entry for entry in artifact.manifest.contents}
    assert set(entries) == {"selection.jsonl", "results.json"}
    selection_file = (run_dir / "selection.jsonl").read_bytes()
    assert (
        entries["selection.jsonl"].digest == base64.b64encode(hashlib.md5(selection_file).digest()).decode()
    )
    # referenced in the run directory, not copied: syncing uploads the run's own file
    assert Path(entries["selection.jsonl"].local_path).samefile(run_dir / "selection.jsonl")


def _selection_rows(metrics_csv: Path) -> list[dict[str, str]]:
    with metrics_csv.open(newline="") as handle:
        return [row for row in csv.DictReader(handle) if row.get("selection/round")]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "epochs", "expected_rounds"), [("p3", 2, [0, 1]), ("random", 2, [0])])
def test_csv_logger_gets_selection_metrics_at_each_round(
    method: str, epochs: int, expected_rounds: list[int], tmp_path: Path, cache_dir: Path
):
    overrides = [*(SMALL_P3 if method == "p3" else [*SMALL, f"method={method}"])]
    overrides += [f"trainer.max_epochs={epochs}", "test=false"]
    train_and_evaluate(compose_config(overrides, tmp_path, cache_dir))
    results = read_results(tmp_path)
    rows = _selection_rows(tmp_path / "csv" / "metrics.csv")
    assert [int(row["selection/round"]) for row in rows] == expected_rounds
    for row, r in zip(rows, results["selection"]["rounds"], strict=True):
        assert int(row["step"]) == r["global_step"]
        assert int(row["selection/n"]) == r["n"] == 50
        assert float(row["selection/fraction"]) == 0.5
        shares = [float(row[f"selection/level_{k}_share"]) for k in range(1, 6)]
        assert sum(shares) == pytest.approx(1.0)
        assert float(row["selection/share_junk"]) == pytest.approx(r["composition"]["junk"] / 50)
    if method == "p3":
        assert float(rows[1]["selection/pace_threshold"]) == pytest.approx(
            results["selection"]["rounds"][1]["diagnostics"]["pace_threshold"]
        )


@pytest.mark.slow
def test_run_without_loggers_still_runs(tmp_path: Path, cache_dir: Path):
    overrides = [*SMALL, "logger=none", "method=random", "test=false"]
    results = train_and_evaluate(compose_config(overrides, tmp_path, cache_dir))
    assert [r["round"] for r in results["selection"]["rounds"]] == [0]
    assert not (tmp_path / "csv").exists() and not (tmp_path / "wandb").exists()


# the pieces --------------------------------------------------------------------------------------------------
def _example(i: int, **meta: Any) -> Example:
    return Example(id=f"e{i}", prompt="p", target="t", meta=meta)


def test_round_metrics_names_shares_and_diagnostics():
    pool = [_example(0, level=1), _example(1, level=2), _example(2, level=2), _example(3, level=3)]
    for i, ex in enumerate(pool):
        ex.meta.update(is_noisy=i == 1, is_junk=False, dup_group=None, is_duplicate=i == 2)
    record = RoundRecord(
        round=1,
        epoch=1,
        global_step=7,
        ids=["e1", "e2"],
        weights=None,
        scores=None,
        diagnostics={
            "pace_threshold": 0.4,
            "scorer": "likelihood",
            "scored_this_round": True,
            "n": 99,
            "per_level": {"2": 2},
            "pool_score_summary": {"mean": 0.5, "q25": 0.1},
            "kernel bandwidths": [1.0, 2.0],
        },
        forward_tokens=12,
        seconds=0.5,
    )
    metrics = round_metrics(record, pool, {ex.id: i for i, ex in enumerate(pool)})
    assert metrics == {
        "selection/round": 1,
        "selection/n": 2,
        "selection/fraction": 0.5,
        "selection/forward_tokens": 12,
        "selection/seconds": 0.5,
        "selection/pace_threshold": 0.4,
        "selection/scored_this_round": 1,
        "selection/diagnostics_n": 99,
        "selection/pool_score_summary_mean": 0.5,
        "selection/pool_score_summary_q25": 0.1,
        "selection/level_2_share": 1.0,
        "selection/share_noisy": 0.5,
        "selection/share_junk": 0.0,
        "selection/share_duplicate": 0.5,
    }


def test_text_corpora_get_domain_shares_and_no_level_shares():
    comp = {
        "n": 4,
        "per_level": {"None": 4},
        "per_type": {"None": 4},
        "per_domain": {"web": 3, "wiki pages": 1},
    }
    assert composition_shares(comp) == {"domain_web_share": 0.75, "domain_wiki_pages_share": 0.25}
    assert numeric_diagnostics(
        {"reweighting": {"method": "irdro", "temperature": 0.1, "normalise": False}}
    ) == {
        "reweighting_temperature": 0.1,
        "reweighting_normalise": 0,
    }


def _results(**run: Any) -> dict[str, Any]:
    rounds = [
        {
            "round": k,
            "epoch": k,
            "global_step": 4 * k,
            "n": 2,
            "ids_sha256": "x",
            "forward_tokens": 10,
            "seconds": 0.1,
            "diagnostics": {"mean_score": 0.1 * k, **({"jaccard_previous_round": 0.5} if k else {})},
            "composition": {"n": 2, "per_level": {"1": 2 - k, "2": k}, "per_type": {"add": 2}, "noisy": k},
        }
        for k in range(2)
    ]
    return {
        "run": {
            "experiment": "e",
            "method": "p3",
            "dataset": "synthetic_math",
            "budget": 0.5,
            "seed": 0,
            **run,
        },
        "selection": {"pool_size": 4, "n_selected": 3, "fraction": 0.75, "ids_sha256": "y", "rounds": rounds},
        "metrics": {"test/accuracy": 0.25},
        "compute": {"train_tokens": 100, "selection_forward_tokens": 20, "optimizer_steps": 8},
    }


def test_selection_tables():
    tables = selection_tables(_results())
    columns, rows = tables["selection/composition"]
    assert columns == ["round", "kind", "category", "count", "share"]
    assert [0, "level", "1", 2, 1.0] in rows and [1, "level", "2", 1, 0.5] in rows
    assert [1, "type", "add", 2, 1.0] in rows
    columns, rows = tables["selection/defects"]
    assert columns[:3] == ["round", "n", "noisy"] and rows[1][:3] == [1, 2, 1]
    assert rows[1][columns.index("share_noisy")] == 0.5 and rows[1][columns.index("share_junk")] is None
    columns, rows = tables["selection/rounds"]
    assert columns[-2:] == ["jaccard_previous_round", "mean_score"]
    assert rows[0][-2:] == [None, 0.0] and rows[1][4] == 0.5


def test_artifact_name_is_sanitised():
    assert artifact_name(_results()) == "selection-e-p3-synthetic_math-b0.5-s0"
    assert (
        artifact_name(_results(experiment="a/b c:d", budget=100))
        == "selection-a-b-c-d-p3-synthetic_math-b100-s0"
    )


def test_log_run_to_wandb_without_wandb_logger_does_nothing(tmp_path: Path):
    class CSVLogger:  # any logger that is not wandb's
        def __getattr__(self, name: str):
            raise AssertionError(f"{name} should not be touched")

    log_run_to_wandb([CSVLogger()], _results(), tmp_path)
    log_run_to_wandb([], _results(), tmp_path)
