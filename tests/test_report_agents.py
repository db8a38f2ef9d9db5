"""The report's multi-agent figures (p3bench.report.agent_plots) on fabricated run directories: per-agent
category weights, the console's theta and rewards, and each round's category shares, drawn against the
global step with the mean over seeds; runs without the keys draw none."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread

from p3bench.report import build_report
from p3bench.report.agent_plots import agent_panels, flat_diagnostics, has_agents, share_panels

SEEDS, ROUNDS, U = (0, 1, 2), 4, 30
CATEGORIES = {"quality": ["q1", "q2", "q3"], "domain": ["c4", "github", "pile_cc"]}


def weight(agent: str, c: int, seed: int, r: int) -> float:
    return 0.1 * (c + 1) * r * (1 if agent == "quality" else -1) + 0.01 * seed


def theta(agent: str, seed: int, r: int) -> float:
    share = 0.5 + (0.05 * r + 0.01 * seed) * (1 if agent == "quality" else -1)
    return share


def diagnostics(seed: int, r: int, nested: bool) -> dict[str, Any]:
    """What the method records in a round: flat dotted keys, or the same as nested dicts."""
    flat: dict[str, Any] = {"console.mean_reward": 0.01 * r, "reward.kind": "lookahead"}
    for agent, categories in CATEGORIES.items():
        flat[f"console.theta.{agent}"] = theta(agent, seed, r)
        flat[f"console.agent_reward.{agent}"] = 0.02 * r + 0.001 * seed
        for c, category in enumerate(categories):
            flat[f"agents.{agent}.weight.{category}"] = weight(agent, c, seed, r)
            flat[f"agents.{agent}.selected_share.{category}"] = [0.2, 0.3, 0.5][c] if r else 1 / 3
    if not nested:
        return flat
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *heads, last = key.split(".")
        node = tree
        for head in heads:
            node = node.setdefault(head, {})
        node[last] = value
    return tree


def write_run(root: Path, method: str, seed: int, rounds: list[dict[str, Any]]) -> Path:
    run_dir = root / f"{method}_s{seed}"
    run_dir.mkdir(parents=True)
    results = {
        "schema_version": 1,
        "status": "ok",
        "run": {
            "experiment": "multi_agent_run",
            "method": method,
            "dataset": "text_mix",
            "model": "tiny",
            "budget": 0.3,
            "seed": seed,
            "regime": "iso_compute",
        },
        "selection": {
            "pool_size": 1000,
            "budget": 0.3,
            "budget_size": 300,
            "n_selected": 300,
            "fraction": 0.3,
            "rounds": [
                {"round": r, "global_step": U * r, "n": 300, "ids_sha256": f"{r}", "diagnostics": d}
                for r, d in enumerate(rounds)
            ],
        },
        "metrics": {"test/perplexity": 30.0 + seed, "val/loss": 3.0},
        "compute": {"train_tokens": 1000, "selection_forward_tokens": 10},
    }
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("agents")
    for seed in SEEDS:
        write_run(
            root / "sweep", "multi_agent", seed, [diagnostics(seed, r, nested=False) for r in range(ROUNDS)]
        )
        write_run(
            root / "sweep",
            "multi_agent_fixed",
            seed,
            [diagnostics(seed, r, nested=True) for r in range(ROUNDS)],
        )
        write_run(root / "sweep", "random_dynamic", seed, [{"seen_fraction": 0.1}] * ROUNDS)
    return build_report([root / "sweep"], root / "report")


def check_image(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500
    assert (image[..., :3] < 0.9).any(axis=2).mean() > 0.01  # not a blank canvas


def test_flat_diagnostics_flattens_nested_dicts_with_dots():
    assert flat_diagnostics({"a": {"b": {"c": 1}}, "d": 2.5, "e": "text", "f": float("nan")}) == {
        "a.b.c": 1.0,
        "d": 2.5,
    }


def test_figures_are_drawn_for_the_multi_agent_runs_only(report):
    for method in ("multi_agent", "multi_agent_fixed"):
        for kind in (f"agents_{method}_b0.3", f"agent_shares_{method}_b0.3"):
            (key,) = [k for k in report.files if k.endswith("/" + kind)]
            assert sorted(p.suffix for p in report.files[key]) == [".png", ".svg"]
            check_image(next(p for p in report.files[key] if p.suffix == ".png"))
            assert kind in report.markdown
    assert not [k for k in report.files if "random_dynamic" in k and "agent" in k]
    svg = next(p for p in report.figures("agents_multi_agent_b0.3")).with_suffix(".svg").read_text()
    for text in ("pile_cc", "github", "q3", "θ"):
        assert text in svg


def test_panels_hold_the_mean_and_sd_over_seeds_at_each_global_step(report):
    (section,) = report.sections
    groups = {g.method: g for g in section.groups}
    assert has_agents(groups["multi_agent"]) and not has_agents(groups["random_dynamic"])
    for method in ("multi_agent", "multi_agent_fixed"):  # flat and nested diagnostics read the same
        panels = {p["title"]: p["lines"] for p in agent_panels(groups[method])}
        assert list(panels) == [
            "domain: category weights w",
            "quality: category weights w",
            "console: agent weights θ",
            "console: agent rewards R_A",
        ]
        line = panels["domain: category weights w"]["github"]
        assert line["x"] == [U * r for r in range(ROUNDS)]
        for r in range(ROUNDS):
            per_seed = [weight("domain", 1, s, r) for s in SEEDS]
            assert line["y"][r] == pytest.approx(statistics.fmean(per_seed))
            assert line["sd"][r] == pytest.approx(statistics.stdev(per_seed))
        thetas = panels["console: agent weights θ"]
        assert thetas["quality"]["y"][-1] == pytest.approx(
            statistics.fmean(theta("quality", s, 3) for s in SEEDS)
        )
        shares = {p["title"]: p["shares"] for p in share_panels(groups[method])}
        assert shares["quality: share of the selection"]["q3"] == pytest.approx(
            {0: 1 / 3, **{U * r: 0.5 for r in range(1, ROUNDS)}}
        )
        total = np.sum([list(v.values()) for v in shares["domain: share of the selection"].values()], axis=0)
        np.testing.assert_allclose(total, 1.0)


def test_runs_without_agent_keys_draw_no_agent_figures(tmp_path: Path):
    for seed in SEEDS:
        write_run(tmp_path / "sweep", "random_dynamic", seed, [{"seen_fraction": 0.1}] * ROUNDS)
        write_run(tmp_path / "sweep", "broken", seed, [{"agents": "n/a"}, None])  # not numbers, not a dict
    report = build_report([tmp_path / "sweep"], tmp_path / "report")
    assert all(r.ok for r in report.runs)
    assert not report.figures("agents_") and not report.figures("agent_shares_")
    assert report.figures("quality_vs_fraction")


def test_the_console_table_says_whether_theta_moved_and_what_each_agent_prefers(report, tmp_path: Path):
    table = [
        line
        for line in report.markdown.splitlines()
        if line.startswith("| multi_agent |") and "θ" not in line
    ]
    table = [line for line in table if "moved)" in line]
    assert len(table) == 1
    cells = [c.strip() for c in table[0].strip("|").split("|")]
    spreads = [theta("quality", s, ROUNDS - 1) - theta("domain", s, ROUNDS - 1) for s in SEEDS]
    assert cells[3] == f"{statistics.fmean(spreads):.5f} ± {statistics.stdev(spreads):.5f} (moved)"
    # quality weights grow with the category index, domain weights fall with it
    assert "c4 (3/3 seeds; 20% of the selection)" in cells
    assert "q3 (3/3 seeds; 50% of the selection)" in cells
    assert not [
        line for line in report.markdown.splitlines() if "random_dynamic" in line and "moved)" in line
    ]

    def still(seed: int, r: int) -> dict[str, Any]:
        flat = diagnostics(seed, r, nested=False)
        flat.update({"console.theta.quality": 0.5, "console.theta.domain": 0.5 + 1e-6 * r})
        return flat

    for seed in SEEDS:
        write_run(tmp_path / "sweep", "multi_agent", seed, [still(seed, r) for r in range(ROUNDS)])
    flat_report = build_report([tmp_path / "sweep"], tmp_path / "report", make_plots=False)
    (row,) = [line for line in flat_report.markdown.splitlines() if "moved)" in line]
    assert "0.00000 ± 0.00000 (not moved)" in row
