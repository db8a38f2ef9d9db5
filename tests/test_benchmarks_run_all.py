"""``benchmarks/run_all.py`` at its tiny sizes: every benchmark gives its rows, each with a ratio of two
measured times, and every same-result check (same DPP selection, density ranks, facility-location value,
scores, sandboxed output, timed steps) holds; the table is written as markdown and JSON."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

EXPECTED_ROWS = {
    "DPP greedy MAP, cosine kernel",
    "DPP greedy MAP, rbf_blocked kernel",
    "density: LSH sketch vs exact sums",
    "density: LSH sketch vs scikit-learn",
    "facility location vs submodlib",
    "facility location vs apricot",
    "scoring: likelihood pass vs raw forward",
    "scoring: steps pass vs raw forward",
    "sandbox vs bare subprocess (one at a time, median wall)",
    "sandbox vs bare subprocess (2 workers, per program)",
    "reweighting: irdro step vs ERM",
    "reweighting: midranking step vs ERM",
}


@pytest.fixture(scope="module")
def run_all():
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("run_all", None)


@pytest.mark.slow  # three short runs through the real Trainer (the reweighting rows): about a minute
def test_every_benchmark_gives_a_ratio_and_its_checks_hold(run_all, tmp_path: Path) -> None:
    # one scoring process here: the two-process pass is what the default and --quick sizes run
    result = run_all.run("tiny", allow_code_execution=True, scoring_processes=1, log=lambda _: None)
    md, js = run_all.write_results(result, tmp_path / "ratios.json")
    assert (md.name, js.name) == ("ratios.md", "ratios.json")
    saved = json.loads(js.read_text())
    assert saved["errors"] == {}
    rows = {row["row"]: row for row in saved["rows"]}
    assert set(rows) == EXPECTED_ROWS
    for name, row in rows.items():
        assert row["ours_s"] > 0 and row["reference_s"] > 0, name
        assert row["ratio"] == pytest.approx(row["ours_s"] / row["reference_s"], rel=1e-2), name
        assert row["check_ok"] is True, (name, row["check"])
        expected = None if row["target"] is None else row["ratio"] <= row["target"]
        assert row["meets_target"] == expected, name
        assert f"| {name} |" in md.read_text()
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file left behind"


def test_unknown_benchmark_and_size_are_refused(run_all) -> None:
    with pytest.raises(ValueError, match="--only"):
        run_all.run("tiny", ["dpp", "nonsense"])
    with pytest.raises(ValueError, match="size='huge'"):
        run_all.run("huge")
