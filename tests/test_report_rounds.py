"""The report's per-round diagnostics of dynamic methods on fabricated run directories: the pace's admitted
share per round and the DPP's diversity against top-k and random picks. The tables' and runs.csv's numbers
are the means of the results.json values, the figures are written and read back, and runs without these
keys (older runs, other methods) still report."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread

from p3bench.report import build_report
from p3bench.report.round_diagnostics import number, shown_rounds, statistic_of, statistics_of

POOL, ROUNDS, SEEDS = 1000, 4, (0, 1, 2)
BUDGETS = {"0.1": 100, "0.3": 300}
DIVERSITY_STATS = ("mean_cosine", "logdet", "mean_quality")


def pace_diagnostics(method: str, budget: str, seed: int, r: int) -> dict[str, Any]:
    """What P3 records about its pace: the scheduled share 0.2 + 0.2 r, raised by the floor (1.5 x budget)."""
    scheduled = min(1.0, 0.2 + 0.2 * r)
    floor = 1.5 * BUDGETS[budget] / POOL
    admitted = max(scheduled, floor) + 0.001 * seed + (0.02 if method == "p3_no_dpp" else 0.0)
    return {
        "admitted": round(admitted * POOL),
        "admitted_fraction": admitted,
        "pace_scheduled_fraction": scheduled,
        "pace_floor_applied": floor > scheduled,
    }


def diversity_diagnostics(method: str, budget: str, seed: int, r: int) -> dict[str, Any]:
    """DPP diversity numbers that differ by method, budget, seed and round, so that a wrong mean shows."""
    base = 0.05 * seed + 0.01 * r + (0.2 if budget == "0.3" else 0.0) + (0.1 if method == "dpp" else 0.0)
    values = {
        "diversity_overlap_topk_quality": 0.3 + base,
        "diversity_overlap_random_expected": BUDGETS[budget] / (BUDGETS[budget] * 1.5 + 10 * r),
        "diversity_effective_rank": 40.0 + 10 * base,
    }
    for k, stat in enumerate(DIVERSITY_STATS):
        for j, variant in enumerate(("pick", "topk", "random")):
            values[f"diversity_{stat}_{variant}"] = (-150.0 if stat == "logdet" else 0.1) * (1 + k + j + base)
    return values


def write_run(root: Path, method: str, budget: str, seed: int, rounds: list[dict[str, Any]]) -> Path:
    """A finished run directory whose results.json has the given rounds' diagnostics."""
    run_dir = root / f"{method}_b{budget}_s{seed}"
    run_dir.mkdir(parents=True)
    results = {
        "schema_version": 1,
        "status": "ok",
        "run": {
            "experiment": "p3_synthetic_sweep",
            "method": method,
            "dataset": "synthetic_math",
            "model": "tiny",
            "budget": float(budget),
            "seed": seed,
            "regime": "iso_epoch",
        },
        "selection": {
            "pool_size": POOL,
            "budget": float(budget),
            "budget_size": BUDGETS[budget],
            "n_selected": BUDGETS[budget],
            "fraction": BUDGETS[budget] / POOL,
            "rounds": [
                {"round": r, "n": BUDGETS[budget], "ids_sha256": f"{r}", "diagnostics": d}
                for r, d in enumerate(rounds)
            ],
        },
        "metrics": {"test/accuracy": 0.1 + 0.01 * seed, "val/loss": 2.0 - 0.1 * seed},
        "compute": {"train_tokens": 1000, "selection_forward_tokens": 10},
    }
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def fabricated_sweep(root: Path) -> Path:
    """p3 (pace and DPP every round), p3_no_dpp (pace only), a static dpp (one DPP round), random_dynamic
    and random (neither key), and p3 runs written before the keys existed, at two budgets and three seeds."""
    for budget in BUDGETS:
        for seed in SEEDS:
            pace = [pace_diagnostics("p3", budget, seed, r) for r in range(ROUNDS)]
            both = [p | diversity_diagnostics("p3", budget, seed, r) for r, p in enumerate(pace)]
            write_run(root, "p3", budget, seed, both)
            write_run(
                root,
                "p3_no_dpp",
                budget,
                seed,
                [pace_diagnostics("p3_no_dpp", budget, seed, r) for r in range(ROUNDS)],
            )
            write_run(root, "dpp", budget, seed, [diversity_diagnostics("dpp", budget, seed, 0)])
            write_run(root, "random_dynamic", budget, seed, [{"seen_fraction": 0.1}] * ROUNDS)
            write_run(root, "random", budget, seed, [{}])
            old = [{"admitted": 200, "per_level": {"1": 3}}] * ROUNDS  # an older P3: no admitted share
            write_run(root, "p3_old", budget, seed, old)
    return root


def values(method: str, budget: str, key: str, r: int | None = None) -> list[float]:
    """The results.json values of ``key`` per seed: in round ``r``, or each run's mean over its rounds."""
    per_seed = []
    for seed in SEEDS:
        if method == "dpp":
            rounds = [diversity_diagnostics("dpp", budget, seed, 0)]
        else:
            rounds = [pace_diagnostics(method, budget, seed, i) for i in range(ROUNDS)]
            if method == "p3":
                rounds = [d | diversity_diagnostics("p3", budget, seed, i) for i, d in enumerate(rounds)]
        if r is None:
            per_seed.append(statistics.fmean(d[key] for d in rounds if key in d))
        else:
            per_seed.append(rounds[r][key])
    return per_seed


def table(markdown: str, first_header: str) -> list[list[str]]:
    """The rows (cells) of the Markdown table whose header starts with ``first_header``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first_header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    root = fabricated_sweep(tmp_path_factory.mktemp("sweep"))
    return build_report([root], root.parent / "report")


def test_pace_table_is_the_mean_over_seeds_of_each_rounds_share(report):
    rows = table(report.markdown, "| method | budget | seeds | share | round 0 |")
    labelled = {(r[0], r[1], r[3]): r[4:] for r in rows}
    # the dynamic methods that record the pace; the static dpp, random, random_dynamic and old runs do not
    assert sorted({(m, b) for m, b, _ in labelled}) == [(m, b) for m in ("p3", "p3_no_dpp") for b in BUDGETS]
    for method in ("p3", "p3_no_dpp"):
        for budget in BUDGETS:
            for r in range(ROUNDS):
                admitted = statistics.fmean(values(method, budget, "admitted_fraction", r))
                scheduled = statistics.fmean(values(method, budget, "pace_scheduled_fraction", r))
                floor = any(values(method, budget, "pace_floor_applied", r))
                assert labelled[method, budget, "admitted"][r] == f"{admitted:.3f}" + ("†" if floor else "")
                assert labelled[method, budget, "scheduled"][r] == f"{scheduled:.3f}"
    # at budget 0.3 the floor (1.5 x 300 = 450 of 1000) lifts rounds 0 and 1 above the schedule
    assert [c.endswith("†") for c in labelled["p3", "0.3", "admitted"]] == [True, True, False, False]


def test_diversity_table_is_the_mean_over_seeds_of_each_runs_mean_over_rounds(report):
    rows = {(r[0], r[1]): r for r in table(report.markdown, "| method | budget | seeds | DPP rounds |")}
    assert sorted(rows) == [(m, b) for m in ("dpp", "p3") for b in BUDGETS]
    header = next(line for line in report.markdown.splitlines() if "| DPP rounds |" in line)
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[4:] == [
        "overlap with the top-k by quality (random: expected)",
        "mean pairwise cosine: pick / top-k / random",
        "log-det of the kernel: pick / top-k / random",
        "mean quality: pick / top-k / random",
        "effective rank of the embeddings",
    ]
    for (method, budget), row in rows.items():

        def mean(key: str, method: str = method, budget: str = budget) -> str:
            return number(statistics.fmean(values(method, budget, key)))

        assert row[2] == "0, 1, 2" and row[3] == ("1" if method == "dpp" else str(ROUNDS))
        overlap = mean("diversity_overlap_topk_quality")
        assert row[4] == f"{overlap} (random: {mean('diversity_overlap_random_expected')})"
        for k, stat in enumerate(DIVERSITY_STATS):
            assert row[5 + k] == " / ".join(mean(f"diversity_{stat}_{v}") for v in ("pick", "topk", "random"))
        assert row[8] == mean("diversity_effective_rank")
    # the per-round overlap table: the mean over seeds in each round, the random expectation in parentheses
    per_round = {(r[0], r[1]): r[2:] for r in table(report.markdown, "| method | budget | round 0 |")}
    for r in range(ROUNDS):
        overlap = statistics.fmean(values("p3", "0.3", "diversity_overlap_topk_quality", r))
        expected = statistics.fmean(values("p3", "0.3", "diversity_overlap_random_expected", r))
        assert per_round["p3", "0.3"][r] == f"{number(overlap)} ({number(expected)})"
    assert per_round["dpp", "0.1"] == [per_round["dpp", "0.1"][0], "", "", ""]


def test_runs_csv_has_each_runs_means_over_rounds(report):
    rows = {
        (r["method"], r["budget"], r["seed"]): r for r in csv.DictReader((report.out_dir / "runs.csv").open())
    }
    assert len(rows) == 6 * len(BUDGETS) * len(SEEDS)
    for seed in SEEDS:
        p3 = rows["p3", "0.3", str(seed)]
        rounds = [
            pace_diagnostics("p3", "0.3", seed, r) | diversity_diagnostics("p3", "0.3", seed, r)
            for r in range(ROUNDS)
        ]
        for key in (
            "admitted_fraction",
            "pace_scheduled_fraction",
            *diversity_diagnostics("p3", "0.3", 0, 0),
        ):
            assert float(p3[f"{key}_round_mean"]) == pytest.approx(statistics.fmean(d[key] for d in rounds))
        assert int(p3["pace_floor_rounds"]) == sum(d["pace_floor_applied"] for d in rounds) == 2
        assert int(p3["dpp_rounds"]) == ROUNDS
        no_dpp = rows["p3_no_dpp", "0.3", str(seed)]
        assert no_dpp["dpp_rounds"] == "" and no_dpp["diversity_logdet_pick_round_mean"] == ""
        expected = statistics.fmean(
            pace_diagnostics("p3_no_dpp", "0.3", seed, r)["admitted_fraction"] for r in range(ROUNDS)
        )
        assert float(no_dpp["admitted_fraction_round_mean"]) == pytest.approx(expected)
        for method in ("random", "random_dynamic", "p3_old"):
            row = rows[method, "0.3", str(seed)]
            assert row["status"] == "ok" and row["admitted_fraction_round_mean"] == row["dpp_rounds"] == ""


def check_image(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 1000
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500
    # not a blank canvas: a good share of the pixels are not white
    assert (image[..., :3] < 0.9).any(axis=2).mean() > 0.01
    return image


def test_figures_per_budget_are_written_and_read_back(report):
    for budget in BUDGETS:
        for kind in (f"pace_admitted_b{budget}", f"dpp_diversity_b{budget}"):
            (key,) = [k for k in report.files if k.endswith("/" + kind)]
            assert sorted(p.suffix for p in report.files[key]) == [".png", ".svg"]
            check_image(next(p for p in report.files[key] if p.suffix == ".png"))
            svg = next(p for p in report.files[key] if p.suffix == ".svg").read_text()
            assert svg.rstrip().endswith("</svg>")
            assert "figures/" in report.markdown and kind in report.markdown
    pace_svg = next(p for p in report.figures("pace_admitted_b0.3")).with_suffix(".svg").read_text()
    # the legend names the methods that record the pace, and no other
    assert "p3_no_dpp" in pace_svg and "random_dynamic" not in pace_svg and "p3_old" not in pace_svg


def test_runs_without_the_keys_report_as_before(tmp_path: Path):
    """Only older runs and methods without the keys: no pace or diversity table, column or figure."""
    for seed in SEEDS:
        write_run(tmp_path / "sweep", "random_dynamic", "0.1", seed, [{"seen_fraction": 0.1}] * ROUNDS)
        write_run(
            tmp_path / "sweep", "p3_old", "0.1", seed, [{"admitted": 200, "diversity_kernel": "cosine"}] * 2
        )
        broken: list = [{"admitted_fraction": "n/a"}, None]  # a non-number and a round that is not a dict
        write_run(tmp_path / "sweep", "broken", "0.1", seed, broken)
    report = build_report([tmp_path / "sweep"], tmp_path / "report")
    assert all(r.ok for r in report.runs) and len(report.runs) == 3 * len(SEEDS)
    assert "Pace:" not in report.markdown and "DPP diversity" not in report.markdown
    assert not report.figures("pace_admitted") and not report.figures("dpp_diversity")
    assert report.figures("quality_vs_fraction")
    header = (report.out_dir / "runs.csv").read_text().splitlines()[0]
    assert "_round_mean" not in header and "dpp_rounds" not in header


def test_diversity_keys_are_read_generically():
    assert statistic_of("diversity_logdet_topk") == ("logdet", "topk")
    assert statistic_of("diversity_overlap_random_expected") == ("overlap", "random")
    assert statistic_of("diversity_effective_rank") == ("effective_rank", "pick")
    assert statistic_of("diversity_spread_random") == ("spread", "random")
    found = statistics_of(
        ["diversity_spread_pick", "diversity_logdet_random", "diversity_logdet_pick", "diversity_x"]
    )
    assert list(found) == ["logdet", "spread", "x"]
    assert found["logdet"] == {"pick": "diversity_logdet_pick", "random": "diversity_logdet_random"}
    assert shown_rounds(list(range(5))) == list(range(5))
    many = shown_rounds(list(range(30)))
    assert len(many) == 12 and many[0] == 0 and many[-1] == 29 and many == sorted(set(many))
    assert [number(v) for v in (0.12345, -12.345, 1234.5, math.nan)] == ["0.123", "-12.3", "1234", "-"]
