"""``p3bench report`` on a tiny real sweep: the table's numbers are the runs' own, broken runs are listed
and never crash it, figures are written, and the selection diagnostics agree with the selection files."""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from p3bench.report import build_report, load_runs
from p3bench.report.aggregate import Group, Section, Stat, group_runs, stat
from p3bench.report.diagnostics import jaccard, overlap_matrix
from p3bench.report.runs import (
    CORRUPT,
    FAILED,
    NOT_STARTED,
    OK,
    RUN_ELSEWHERE,
    UNFINISHED,
    RunRecord,
    expand_sweep,
)
from tests.conftest import read_results

pytestmark = pytest.mark.slow

METHODS = ["p3_no_dpp", "random"]
BUDGETS = ["0.3", "0.6"]


def results_of(sweep: Path) -> list[dict]:
    return [read_results(p.parent) for p in sorted(sweep.glob("*/results.json"))]


def direct_mean(sweep: Path, method: str, budget: str, metric: str) -> tuple[float, float]:
    values = [
        r["metrics"][metric]
        for r in results_of(sweep)
        if r["run"]["method"] == method and str(r["run"]["budget"]) == budget
    ]
    assert len(values) == 2
    return statistics.fmean(values), statistics.stdev(values)


@pytest.mark.parametrize("metric", [None, "val/loss"])
def test_table_numbers_equal_the_runs_results(tiny_sweep: Path, tmp_path: Path, metric: str | None):
    report = build_report([tiny_sweep], tmp_path / "report", metric=metric, make_plots=False)
    assert [r.status for r in report.runs] == [OK] * 8
    (section,) = report.sections
    # the tiny runs solve almost nothing: near the accuracy floor the answer's probability heads the table
    name = metric or "test/answer_prob"
    assert section.metric == name and section.higher_is_better is (metric is None)
    if metric is None:
        assert section.second == ("test/accuracy", True)
    assert section.methods == METHODS and section.budgets == BUDGETS
    for method in METHODS:
        row = next(line for line in report.markdown.splitlines() if line.startswith(f"| {method} |"))
        for budget in BUDGETS:
            mean, sd = direct_mean(tiny_sweep, method, budget, name)
            got = section.group(method, budget).metric(name)
            assert got.n == 2
            assert got.mean == pytest.approx(mean, abs=1e-12) and got.sd == pytest.approx(sd, abs=1e-12)
            assert f"{mean:.3f} ± {sd:.3f} (n=2)" in row
    if metric == "val/loss":  # lower is better: the bold cell of each column is its smallest mean
        for budget in BUDGETS:
            best = min(METHODS, key=lambda m: direct_mean(tiny_sweep, m, budget, name)[0])
            assert section.best_in_column(budget) == {best}
            cell = f"**{direct_mean(tiny_sweep, best, budget, name)[0]:.3f}"
            assert cell in report.markdown


def test_csv_has_every_run_with_its_results(tiny_sweep: Path, tmp_path: Path):
    report = build_report([tiny_sweep], tmp_path / "report", make_plots=False)
    rows = list(csv.DictReader((report.out_dir / "runs.csv").open()))
    assert len(rows) == 8
    for row in rows:
        results = read_results(Path(row["run_dir"]))
        assert row["method"] == results["run"]["method"] and row["seed"] == str(results["run"]["seed"])
        assert float(row["val/loss"]) == results["metrics"]["val/loss"]
        assert int(row["train_tokens"]) == results["compute"]["train_tokens"]
        total = results["compute"]["train_tokens"] + results["compute"]["selection_forward_tokens"]
        assert int(row["total_compute_tokens"]) == total
        assert row["ids_sha256"] == results["selection"]["ids_sha256"]


def test_defect_shares_match_the_selection_files(tiny_sweep: Path):
    """The trained-on shares the report takes from results.json equal those recomputed from each run's
    selection.jsonl (one row per round and example) against the regenerated pool's oracle fields."""
    from p3bench.data.synthetic_math import load_synthetic_math
    from p3bench.results import trained_defect_shares

    for run_dir in sorted(p.parent for p in tiny_sweep.glob("*/results.json")):
        results = read_results(run_dir)
        meta = {ex.id: ex.meta for ex in load_synthetic_math(**results["config"]["dataset"]["params"]).train}
        rows = [json.loads(line) for line in (run_dir / "selection.jsonl").read_text().splitlines()]
        expected = {
            "noisy": sum(meta[r["id"]]["is_noisy"] for r in rows) / len(rows),
            "junk": sum(meta[r["id"]]["is_junk"] for r in rows) / len(rows),
            "duplicate": sum(meta[r["id"]]["is_duplicate"] for r in rows) / len(rows),
        }
        assert trained_defect_shares(results) == pytest.approx(expected)


def test_per_round_composition_and_overlap(tiny_sweep: Path):
    records = load_runs([tiny_sweep])
    for record in records:
        rounds = record.results["selection"]["rounds"]
        # p3_no_dpp reselects every epoch: three rounds; random selects once
        assert len(rounds) == (3 if record.method == "p3_no_dpp" else 1)
        rows = [json.loads(line) for line in (record.path / "selection.jsonl").read_text().splitlines()]
        for r in rounds:
            assert (
                sum(r["composition"]["per_level"].values())
                == r["n"]
                == sum(x["round"] == r["round"] for x in rows)
            )
    (section,) = group_runs(records)
    groups = [section.group(m, "0.3") for m in METHODS]
    matrix = overlap_matrix(groups)
    for i, j in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        expected = statistics.fmean(
            jaccard(a.selected_ids, b.selected_ids)
            for a in groups[i].runs
            for b in groups[j].runs
            if a.seed == b.seed
        )
        assert matrix[i][j] == pytest.approx(expected)
    assert matrix[0][0] == 1.0 and 0.0 < matrix[0][1] < 1.0


def test_pace_table_and_columns_are_the_runs_admitted_shares(tiny_sweep: Path, tmp_path: Path):
    """p3_no_dpp records the pace's admitted share each round: the summary's pace table holds its mean over
    seeds per round, runs.csv each run's mean over rounds; random records none and is in neither."""
    report = build_report([tiny_sweep], tmp_path / "report", make_plots=False)
    lines = report.markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method | budget | seeds | share |"))
    assert lines[start].endswith("| round 0 | round 1 | round 2 |")
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    admitted = {(r[0], r[1]): r[4:] for r in rows if r[3] == "admitted"}
    assert sorted(admitted) == [("p3_no_dpp", b) for b in BUDGETS]
    for budget in BUDGETS:
        runs = [
            r
            for r in results_of(tiny_sweep)
            if r["run"]["method"] == "p3_no_dpp" and str(r["run"]["budget"]) == budget
        ]
        assert len(runs) == 2
        for k in range(3):
            shares = [r["selection"]["rounds"][k]["diagnostics"]["admitted_fraction"] for r in runs]
            assert admitted["p3_no_dpp", budget][k].rstrip("†") == f"{statistics.fmean(shares):.3f}"
    for row in csv.DictReader((report.out_dir / "runs.csv").open()):
        results = read_results(Path(row["run_dir"]))
        shares = [r["diagnostics"].get("admitted_fraction") for r in results["selection"]["rounds"]]
        if row["method"] == "random":
            assert shares == [None] and row["admitted_fraction_round_mean"] == ""
        else:
            assert float(row["admitted_fraction_round_mean"]) == pytest.approx(statistics.fmean(shares))


def break_runs(sweep: Path, target: Path) -> dict[str, str]:
    """A copy of the sweep with one corrupt, one unfinished, one failed and one never-started run."""
    shutil.copytree(sweep, target)
    jobs = {p.name.split("_", 1)[0]: p for p in target.iterdir() if p.is_dir()}
    (jobs["0"] / "results.json").write_text('{"run": {"method": "random"')  # cut short
    (jobs["1"] / "results.json").unlink()
    (jobs["2"] / "results.json").unlink()
    with (jobs["2"] / "run.log").open("a") as log:
        log.write("[2026-01-01 00:00:00,000][p3bench][ERROR] - run failed: budget=1.5 is out of range\n")
    shutil.rmtree(jobs["7"])
    return {"corrupt": jobs["0"].name, "unfinished": jobs["1"].name, "failed": jobs["2"].name}


def test_broken_runs_are_listed_not_dropped(tiny_sweep: Path, tmp_path: Path):
    names = break_runs(tiny_sweep, tmp_path / "sweep")
    report = build_report([tmp_path / "sweep"], tmp_path / "report")
    status = {r.path.name: r.status for r in report.runs}
    assert status[names["corrupt"]] == CORRUPT
    assert status[names["unfinished"]] == UNFINISHED
    assert status[names["failed"]] == FAILED
    (missing,) = [r for r in report.runs if r.status == NOT_STARTED]
    assert (missing.method, missing.budget, missing.seed) == ("p3_no_dpp", 0.6, 1)
    assert sum(r.ok for r in report.runs) == 4 and len(report.runs) == 8
    problems = report.markdown.split("## Failed, unfinished and missing runs")[1]
    for name in names.values():
        assert name in problems
    assert "budget=1.5 is out of range" in problems and "job 7 (" in problems
    # the remaining runs still make the table, with their counts
    (section,) = report.sections
    assert section.group("random", "0.3") is None  # both of its runs are broken
    assert section.group("random", "0.6").metric("val/loss").n == 1
    rows = list(csv.DictReader((report.out_dir / "runs.csv").open()))
    assert sorted(r["status"] for r in rows) == sorted([CORRUPT, UNFINISHED, FAILED, NOT_STARTED] + [OK] * 4)


def test_figures_are_written_and_not_empty(tiny_sweep: Path, tmp_path: Path):
    report = build_report([tiny_sweep], tmp_path / "report")
    kinds = [
        "quality_vs_fraction",
        "quality_vs_compute",
        "learning_curves",
        "selected_by_level_b0.3",
        "rounds_by_level_b0.3",
        "pace_admitted_b0.3",
        "pace_admitted_b0.6",
        "overlap_b0.6",
        "planted_defects",
    ]
    for kind in kinds:
        (key,) = [k for k in report.files if k.endswith("/" + kind)]
        assert sorted(p.suffix for p in report.files[key]) == [".png", ".svg"]
        for path in report.files[key]:
            assert path.is_file() and path.stat().st_size > 1000, path
    summary = (report.out_dir / "summary.md").read_text()
    assert "figures/" in summary and summary == report.markdown


def test_command_prints_the_table_and_where_it_wrote(tiny_sweep: Path, tmp_path: Path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "p3bench", "report", str(tiny_sweep), "--out", str(out), "--no-plots"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "| method | budget 0.3 | budget 0.6 |" in done.stdout
    assert f"summary.md: {out / 'summary.md'}" in done.stdout and (out / "runs.csv").is_file()
    missing = subprocess.run(
        [sys.executable, "-m", "p3bench", "report", str(tmp_path / "nowhere")], capture_output=True, text=True
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"p3bench report: error: run directory {str(tmp_path / 'nowhere')!r} does not exist: "
        "expected a run or sweep directory"
    ]


def test_expand_sweep_numbers_jobs_as_hydra_does(tiny_sweep: Path):
    import yaml

    jobs = expand_sweep(yaml.safe_load((tiny_sweep / "multirun.yaml").read_text()))
    assert len(jobs) == 8
    for number, overrides in enumerate(jobs):
        values = dict(o.split("=", 1) for o in overrides)
        (directory,) = tiny_sweep.glob(f"{number}_*")
        assert directory.name == f"{number}_{values['method']}_b{values['budget']}_s{values['seed']}"


# --- aggregation rules, without runs -----------------------------------------------------------------------
def fake_run(method: str, seed: int, value: float) -> RunRecord:
    results = {
        "run": {"method": method, "seed": seed},
        "selection": {"budget_size": 10, "pool_size": 10},
        "metrics": {"m": value},
        "compute": {},
    }
    return RunRecord(Path(f"/x/{method}{seed}"), OK, None, results, {"method": method, "seed": seed})


def test_repeats_of_a_seed_are_averaged_before_the_spread():
    group = Group(
        "e",
        "d",
        "full",
        "all",
        [fake_run("full", 0, 1.0), fake_run("full", 0, 3.0), fake_run("full", 1, 4.0)],
    )
    assert group.metric("m") == Stat(3.0, statistics.stdev([2.0, 4.0]), 2)
    assert stat([]).n == 0 and math.isnan(stat([float("nan")]).mean)


@pytest.mark.parametrize(
    ("means", "higher", "marked"),
    [
        ({"a": 1.0, "b": 2.0}, True, {"b"}),
        ({"a": 1.0, "b": 2.0}, False, {"a"}),
        ({"a": 1.0, "b": 1.0}, True, set()),
    ],
)
def test_best_of_a_column(means: dict[str, float], higher: bool, marked: set[str]):
    groups = [Group("e", "d", m, "0.5", [fake_run(m, 0, v)]) for m, v in means.items()]
    assert Section("e", "d", "m", higher, groups).best_in_column("0.5") == marked


# --- runs that must not be averaged together, reruns, damaged side files ------------------------------------
def edit_results(run_dir: Path, change) -> None:
    path = run_dir / "results.json"
    results = json.loads(path.read_text())
    change(results)
    path.write_text(json.dumps(results))


def test_runs_with_other_settings_are_not_averaged_together(tiny_sweep: Path, tmp_path: Path):
    shutil.copytree(tiny_sweep, tmp_path / "a")
    shutil.copytree(tiny_sweep, tmp_path / "b")
    for overrides in (tmp_path / "b").glob("*/.hydra/overrides.yaml"):
        overrides.write_text(overrides.read_text().replace("trainer.max_epochs=3", "trainer.max_epochs=4"))
    for run_dir in (tmp_path / "b").glob("*_random_*"):  # another model for random: a section of its own
        edit_results(run_dir, lambda r: r["run"].update(model="other"))
    report = build_report(
        [tmp_path / "a", tmp_path / "b"], tmp_path / "report", metric="val/loss", make_plots=False
    )
    by_model = {s.model: s for s in report.sections}
    assert sorted(by_model) == ["micro", "other"]
    default = by_model["micro"]
    assert default.methods == [
        "p3_no_dpp [trainer.max_epochs=3]",
        "p3_no_dpp [trainer.max_epochs=4]",
        "random [trainer.max_epochs=3]",
    ]
    assert all(g.metric("val/loss").n == 2 for g in default.groups)
    assert by_model["other"].methods == ["random"]  # one variant there: no label needed


def test_jobs_finished_in_another_directory_are_not_problems(tiny_sweep: Path, tmp_path: Path):
    shutil.copytree(tiny_sweep, tmp_path / "sweep")
    (rerun,) = (tmp_path / "sweep").glob("7_*")
    shutil.move(rerun, tmp_path / "rerun")
    (unfinished,) = (tmp_path / "sweep").glob("6_*")
    shutil.copytree(unfinished, tmp_path / "rerun6")
    (unfinished / "results.json").unlink()
    report = build_report(
        [tmp_path / "sweep", tmp_path / "rerun", tmp_path / "rerun6"], tmp_path / "out", make_plots=False
    )
    (elsewhere,) = [r for r in report.runs if r.status == RUN_ELSEWHERE]
    assert (elsewhere.method, elsewhere.budget, elsewhere.seed) == ("p3_no_dpp", 0.6, 1)
    assert "finished in" in elsewhere.problem and str(tmp_path / "rerun") in elsewhere.problem
    (still,) = [r for r in report.runs if r.status == UNFINISHED]
    assert str(tmp_path / "rerun6") in still.problem  # listed, with where its settings finished
    assert "1 jobs of the sweep" in report.markdown and elsewhere not in report.problems
    assert report.sections[0].group("p3_no_dpp", "0.6").metric("val/loss").n == 2


def test_damaged_side_files_and_missing_optional_fields_do_not_crash(tiny_sweep: Path, tmp_path: Path):
    shutil.copytree(tiny_sweep, tmp_path / "sweep")
    runs = {p.name.split("_", 1)[0]: p for p in (tmp_path / "sweep").iterdir() if p.is_dir()}
    metrics_csv = runs["0"] / "csv" / "metrics.csv"
    metrics_csv.write_text(metrics_csv.read_text()[:-7])  # cut mid-number
    selection = runs["4"] / "selection.jsonl"
    selection.write_text(selection.read_text()[:-30])  # cut mid-line
    edit_results(runs["1"], lambda r: r["compute"].update(seconds=None))
    edit_results(runs["5"], lambda r: [r["selection"].pop(k) for k in ("rounds", "composition")])
    edit_results(runs["2"], lambda r: r["metrics"].update({"val/loss": "n/a"}))
    report = build_report([tmp_path / "sweep"], tmp_path / "report", metric="val/loss")
    assert all(r.ok for r in report.runs)
    assert [r.path.name for r in report.sections[0].lacking_metric] == [runs["2"].name]
    assert runs["2"].name in report.markdown.split("Finished runs without val/loss")[1]
    assert report.figures("overlap_b0.3") and report.figures("learning_curves")
    broken = next(r for r in report.runs if r.path.name == runs["4"].name)
    assert broken.selected_ids is None  # left out of the overlap rather than counted as an empty selection


def test_count_budgets_and_whole_pool_columns(tiny_sweep: Path, tmp_path: Path):
    shutil.copytree(tiny_sweep, tmp_path / "sweep")
    for run_dir in (tmp_path / "sweep").glob("*_random_b0.3_*"):
        edit_results(run_dir, lambda r: r["run"].update(budget=120))
    for run_dir in (tmp_path / "sweep").glob("*_random_b0.6_*"):
        edit_results(run_dir, lambda r: r["selection"].update(budget_size=r["selection"]["pool_size"]))
    report = build_report([tmp_path / "sweep"], tmp_path / "report", metric="val/loss", make_plots=False)
    (section,) = report.sections
    assert section.budgets == ["0.3", "0.6", "120", "all"]
    assert section.group("random", "120").metric("val/loss").n == 2
    assert section.group("random", "all").metric("val/loss").n == 2
    assert "| method | budget 0.3 | budget 0.6 | budget 120 | whole pool |" in report.markdown


def test_metric_direction_must_be_known(tiny_sweep: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="--higher-is-better"):
        build_report([tiny_sweep], tmp_path / "a", metric="selection/custom", make_plots=False)
    report = build_report(
        [tiny_sweep], tmp_path / "b", metric="train/tokens", make_plots=False, higher_is_better=True
    )
    assert report.sections[0].higher_is_better is True
