"""The report's paired comparisons on a fabricated sweep whose effects are known: a clear effect is
``better`` or ``worse``, a null one ``inconclusive``, the reference is not compared with itself, a missing
seed drops the pair and not the method, and the controls say whether a section's findings are decisive."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from p3bench.report import build_report
from p3bench.report.aggregate import group_runs
from p3bench.report.comparisons import compare_section
from p3bench.report.runs import load_runs

N_TEST = 200
SEEDS = (0, 1, 2, 3)
#: the planted mean effect of each method on answer_bpb (lower is better) against random
EFFECTS = {"random": 0.0, "full": -0.30, "oracle_clean": -0.20, "oracle_defects": 0.20, "p3": 0.0}
#: the null method's per-seed offsets from random: they average to about zero
NULL_OFFSETS = {0: 0.010, 1: -0.012, 2: 0.004, 3: 0.001}


def write_run(
    root: Path, method: str, seed: int, values: np.ndarray, budget: float, pool: int = 100, prob: bool = False
) -> None:
    run = root / f"{method}_b{budget}_s{seed}"
    run.mkdir(parents=True)
    whole = method == "full"
    accuracy = (values < 1.4).astype(float)  # a few solved problems: accuracy stays near the floor
    ids = [f"t{i:04d}" for i in range(len(values))]
    predictions = [
        {
            "id": i,
            "correct": bool(a),
            "answer_bpb": float(v),
            **({"answer_prob": float(np.exp(-v))} if prob else {}),
        }
        for i, a, v in zip(ids, accuracy, values, strict=True)
    ]
    (run / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    size = pool if whole else int(budget * pool)
    results = {
        "status": "ok",
        "run": {
            "experiment": "fabricated",
            "dataset": "synthetic_math",
            "model": "tiny",
            "regime": "iso_epoch",
            "method": method,
            "budget": budget,
            "seed": seed,
        },
        "dataset": {"task": "qa"},
        "selection": {"pool_size": pool, "budget_size": size, "n_selected": size, "fraction": size / pool},
        "metrics": {
            "test/accuracy": float(accuracy.mean()),
            "test/answer_bpb": float(values.mean()),
            **({"test/answer_prob": float(np.exp(-values).mean())} if prob else {}),
            "test/n_examples": float(len(values)),
        },
        "compute": {"train_tokens": 1000 * size},
    }
    (run / "results.json").write_text(json.dumps(results))


def fabricate(
    root: Path, effects: dict[str, float], missing: dict[str, int] | None = None, prob: bool = False
) -> Path:
    """Runs of each method at budget 0.3 (full on the whole pool) over :data:`SEEDS`: each seed shifts every
    method alike (the same split and initial model), each test problem has its own difficulty, and each run
    adds its own small noise; ``missing`` leaves one seed of a method out."""
    rng = np.random.default_rng(0)
    difficulty = rng.normal(2.0, 0.3, N_TEST)
    seed_shift = {s: rng.normal(0, 0.2) for s in SEEDS}
    random_values = {}
    for method, effect in effects.items():
        for seed in SEEDS:
            if (missing or {}).get(method) == seed:
                continue
            if method == "p3":  # a null effect: random's values, shifted by per-seed offsets that cancel
                noise = rng.normal(0, 0.05, N_TEST)
                values = random_values[seed] + NULL_OFFSETS[seed] + noise - noise.mean()
            else:
                values = difficulty + seed_shift[seed] + effect + rng.normal(0, 0.02, N_TEST)
            if method == "random":
                random_values[seed] = values
            write_run(root, method, seed, values, 0.3, prob=prob)
    return root


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    return fabricate(tmp_path / "sweep", EFFECTS, missing={"p3": 2})


def test_the_answer_probability_heads_near_the_floor_higher_is_better(tmp_path: Path):
    """With the answer's probability recorded it heads the table (before its bits per byte), higher is better,
    and the verdicts follow: a lower bits per byte is a higher probability, so the same planted effects read
    the same way."""
    (section,) = group_runs(load_runs([fabricate(tmp_path / "sweep", EFFECTS, prob=True)]))
    assert section.metric == "test/answer_prob" and section.higher_is_better
    assert section.second == ("test/accuracy", True)
    found = rows_by(compare_section(section))
    assert found[("full", "random")].verdict == "better" and found[("full", "random")].mean_diff > 0
    assert found[("oracle_clean", "random")].verdict == "better"
    assert found[("oracle_defects", "random")].verdict == "worse"
    assert found[("p3", "random")].verdict == "inconclusive"


def rows_by(comparisons) -> dict[tuple[str, str], object]:
    return {(c.method, c.reference): c for _, c in comparisons.rows}


def test_verdicts_follow_the_planted_effects(sweep: Path):
    (section,) = group_runs(load_runs([sweep]))
    # near the accuracy floor the continuous metric heads the table, accuracy beside it
    assert section.metric == "test/answer_bpb" and not section.higher_is_better
    assert section.second == ("test/accuracy", True)
    found = rows_by(compare_section(section))
    assert found[("full", "random")].verdict == "better"
    assert found[("oracle_clean", "random")].verdict == "better"
    assert found[("oracle_defects", "random")].verdict == "worse"
    assert found[("p3", "random")].verdict == "inconclusive"
    # the reference is never compared with itself, and two references once (the later against the earlier)
    assert ("random", "random") not in found and ("full", "full") not in found
    assert ("random", "full") not in found
    full = found[("full", "random")]
    assert full.mean_diff == pytest.approx(-0.30, abs=0.02)
    assert full.t_low < full.mean_diff < full.t_high < 0
    assert full.boot_low <= full.mean_diff <= full.boot_high


def test_a_missing_seed_drops_the_pair_not_the_method(sweep: Path):
    (section,) = group_runs(load_runs([sweep]))
    found = rows_by(compare_section(section))
    p3 = found[("p3", "random")]
    assert p3.n_pairs == 3 and 2 not in p3.seeds
    assert found[("full", "random")].n_pairs == 4
    # an inconclusive difference says how many seeds would resolve it, and the smallest it could detect
    assert p3.mde > abs(p3.mean_diff)
    assert p3.seeds_needed is None or p3.seeds_needed > 3


def test_differences_equal_the_mean_of_the_per_seed_differences(sweep: Path):
    (section,) = group_runs(load_runs([sweep]))
    found = rows_by(compare_section(section))
    by_run = {(r.method, r.seed): r.results["metrics"]["test/answer_bpb"] for r in load_runs([sweep]) if r.ok}
    direct = [by_run[("oracle_clean", s)] - by_run[("random", s)] for s in SEEDS]
    assert found[("oracle_clean", "random")].mean_diff == pytest.approx(np.mean(direct))
    assert found[("oracle_clean", "random")].sd_diff == pytest.approx(np.std(direct, ddof=1))


def test_controls_decide_whether_a_section_is_decisive(sweep: Path, tmp_path: Path):
    (section,) = group_runs(load_runs([sweep]))
    good = compare_section(section)
    assert good.decisive is True and {c.control for c in good.controls} == {"oracle_clean", "oracle_defects"}
    # a testbed whose positive control does not separate from random
    flat = fabricate(tmp_path / "flat", {**EFFECTS, "oracle_clean": 0.0})
    (section,) = group_runs(load_runs([flat]))
    bad = compare_section(section)
    assert bad.decisive is False
    report = build_report([flat], tmp_path / "flat_report", make_plots=False)
    assert "**Not decisive**" in report.markdown
    # no controls at all: not checked, and said so
    none = fabricate(tmp_path / "none", {"random": 0.0, "full": -0.3})
    (section,) = group_runs(load_runs([none]))
    assert compare_section(section).decisive is None
    assert (
        "No control was compared with random"
        in build_report([none], tmp_path / "none_report", make_plots=False).markdown
    )


def test_report_writes_the_comparisons_and_ranks(sweep: Path, tmp_path: Path):
    report = build_report([sweep], tmp_path / "report", make_plots=True)
    assert "Paired differences on test/answer_bpb" in report.markdown
    assert "Paired differences on test/accuracy" in report.markdown  # the second metric, always shown
    with (tmp_path / "report" / "comparisons.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    bpb = {(r["method"], r["reference"]): r for r in rows if r["metric"] == "test/answer_bpb"}
    assert bpb[("full", "random")]["verdict"] == "better"
    assert bpb[("oracle_clean", "random")]["control"] == "True"
    assert bpb[("p3", "random")]["n_pairs"] == "3"
    ranks = report.comparisons[report.sections[0].slug][0].rankings["0.3"]
    # the methods of the column are ranked, the controls are not
    assert set(ranks) == {"p3", "random"}
    assert sum(r["p_first"] for r in ranks.values()) == pytest.approx(1.0)
    assert report.figures("paired_differences")


def test_reference_option_through_the_command(sweep: Path, tmp_path: Path):
    out = tmp_path / "by_full"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "p3bench",
            "report",
            str(sweep),
            "--out",
            str(out),
            "--reference",
            "full",
            "--no-plots",
            "--holm",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    with (out / "comparisons.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows and {r["reference"] for r in rows} == {"full"}
    assert "Holm-corrected" in done.stdout


def test_an_unknown_reference_is_one_line_and_exit_2(sweep: Path, tmp_path: Path):
    with pytest.raises(ValueError, match=r"--reference 'randon': no finished run of that method"):
        build_report([sweep], tmp_path / "r", references=("randon",), make_plots=False)
    done = subprocess.run(
        [sys.executable, "-m", "p3bench", "report", str(sweep), "--reference", "randon", "--no-plots"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1


def test_runs_with_other_settings_meet_the_reference_with_the_same_settings(tmp_path: Path):
    """A sweep over a dataset setting: each variant's methods and controls are compared with the random run
    of the same variant, never across variants."""
    plain = fabricate(tmp_path / "plain", {"random": 0.0, "oracle_clean": -0.2, "p3": 0.0})
    shifted = fabricate(tmp_path / "shifted", {"random": 0.5, "oracle_clean": 0.3, "p3": 0.5})
    for run in shifted.iterdir():  # the same runs with another setting, recorded as Hydra does
        (run / ".hydra").mkdir()
        (run / ".hydra" / "config.yaml").write_text("experiment_name: fabricated\n")
        (run / ".hydra" / "overrides.yaml").write_text("- dataset.params.noise_kind=answer\n")
    kernel = fabricate(tmp_path / "kernel", {"random": 0.0, "p3": 0.0})
    for run in kernel.iterdir():  # a method's own option: still compared with the plain reference
        if run.name.startswith("random"):
            shutil.rmtree(run)
            continue
        (run / ".hydra").mkdir()
        (run / ".hydra" / "config.yaml").write_text("experiment_name: fabricated\n")
        (run / ".hydra" / "overrides.yaml").write_text("- method.dpp.kernel=cosine\n")
    (section,) = group_runs(load_runs([plain, shifted, kernel]))
    found = compare_section(section)
    pairs = {(c.method, c.reference) for _, c in found.rows}
    variant = " [dataset.params.noise_kind=answer]"
    assert ("p3" + variant, "random" + variant) in pairs and ("p3", "random") in pairs
    assert ("p3" + variant, "random") not in pairs
    assert ("p3 [method.dpp.kernel=cosine]", "random") in pairs
    assert set(found.rankings) == {"0.3", "0.3" + variant}  # each setting ranked apart
    assert {check.control for check in found.controls} == {"oracle_clean", "oracle_clean" + variant}
    assert all(check.separates for check in found.controls)
