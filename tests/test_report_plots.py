"""The figures of ``p3bench report`` (p3bench/report/plots.py and the modules it re-exports): every function
writes a readable PNG and an SVG for realistic inputs and survives the edge cases (no data, one point, NaN
sd, long names, 19+ methods); the Pareto front matches a brute-force reference; method styles are
deterministic and distinct; long titles wrap clear of the legend."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from p3bench.report import plots

METHODS = ["random", "p3", "perplexity_base"]
BUDGETS = [0.1, 0.3, 0.5]
SAMPLERS = [
    "random",
    "density",
    "semdedup",
    "prototypes",
    *(f"askllm_{s}" for s in ("small", "base", "large", "xl", "xxl")),
    *(
        f"perplexity_{s}"
        for s in ("small", "base", "large", "xl", "xxl", "20k", "100k", "300k", "500k", "700k")
    ),
]
LONG = "a_very_long_method_name_with_many_options_p3_no_dpp_no_spl_static_warm_start"
FAST = {"dpi": 50, "formats": ("png",)}  # edge cases: any valid image will do


def check_written(paths: list[Path], stem: Path, formats: tuple[str, ...] = ("png", "svg")) -> np.ndarray:
    """The written files are ``<stem>.<format>``, non-empty; returns the PNG read back."""
    assert paths == [stem.with_name(f"{stem.name}.{fmt}") for fmt in formats]
    for path in paths:
        assert path.is_file() and path.stat().st_size > 500
    if "svg" in formats:
        text = stem.with_name(stem.name + ".svg").read_text()
        assert "<svg" in text and text.rstrip().endswith("</svg>")
    image = imread(stem.with_name(stem.name + ".png"))
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    return image


def assert_paper_size(image: np.ndarray, dpi: int = plots.DPI) -> None:
    """Between a single-column figure and a full page at ``dpi``."""
    height, width = image.shape[:2]
    assert 3.0 * dpi <= width <= 11 * dpi, width
    assert 2.0 * dpi <= height <= 10 * dpi, height


def quality_points() -> list[dict]:
    rng = np.random.default_rng(0)
    points = []
    for i, method in enumerate(METHODS):
        for budget in BUDGETS:
            points.append(
                {
                    "method": method,
                    "budget": str(budget),
                    "fraction": budget,
                    "quality": 0.2 + 0.3 * budget + 0.02 * i + rng.normal(0, 0.01),
                    "quality_sd": 0.01,
                    "compute": budget * 2e7 * (1.3 if method != "random" else 1.0),
                    "compute_sd": 1e5,
                    "n": 3,
                }
            )
    points.append(
        {
            "method": "full",
            "budget": "all",
            "fraction": 1.0,
            "quality": 0.45,
            "quality_sd": 0.008,
            "compute": 2e7,
            "compute_sd": 0.0,
            "n": 3,
        }
    )
    return points


def curve(label: str, k: float, sd: bool = True) -> dict:
    x = np.arange(1, 31) * 25.0
    y = 2.0 + 3.0 * np.exp(-x / (300 + 30 * k))
    return {"label": label, "x": x.tolist(), "y": y.tolist(), "y_sd": [0.03] * len(x) if sd else None}


def level_shares(i: int) -> dict[str, float]:
    weights = np.exp(-0.3 * (i - 1) * np.arange(5))
    weights /= weights.sum()
    return {str(level + 1): float(w) for level, w in enumerate(weights)}


def round_counts(n_rounds: int) -> list[dict]:
    return [
        {"round": r, "counts": {str(level): 100 + 40 * (level - 1) * r for level in range(1, 6)}}
        for r in range(n_rounds)
    ]


def pace_rows(n_rounds: int, offset: float = 0.0, floor_until: int = 1) -> list[dict]:
    """A quantile pace (0.2 + 0.2 r) lifted to a floor of 0.45 in the first rounds, three seeds."""
    return [
        {
            "round": r,
            "admitted": max(0.45, min(1.0, 0.2 + 0.2 * r)) + offset,
            "admitted_sd": 0.01,
            "scheduled": min(1.0, 0.2 + 0.2 * r),
            "floor_seeds": 3 if r <= floor_until else 0,
            "n": 3,
        }
        for r in range(n_rounds)
    ]


def diversity_panels(methods: list[str], n_rounds: int) -> list[dict]:
    """Overlap, mean cosine and effective rank panels: the pick, top-k and random variants per round."""

    def line(level: float, i: int) -> dict[int, float]:
        return {r: level + 0.01 * i + 0.005 * r for r in range(n_rounds)}

    variants = {"DPP pick": 0.1, "top-k by quality": 0.3, "uniform random": 0.2}
    return [
        {
            "title": "Overlap with the top-k by quality",
            "series": {
                m: {"DPP pick": line(0.4, i), "uniform random": line(0.6, 0)} for i, m in enumerate(methods)
            },
        },
        {
            "title": "Mean pairwise cosine",
            "series": {
                m: {v: line(level, i) for v, level in variants.items()} for i, m in enumerate(methods)
            },
        },
        {
            "title": "Effective rank",
            "series": {m: {"DPP pick": line(40.0, i)} for i, m in enumerate(methods)},
        },
    ]


def symmetric(n: int, seed: int = 0) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    matrix = rng.uniform(0.05, 0.9, (n, n))
    matrix = (matrix + matrix.T) / 2
    np.fill_diagonal(matrix, 1.0)
    return matrix.tolist()


# ----------------------------------------------------------------------------------- realistic inputs


def test_quality_vs_fraction(tmp_path: Path) -> None:
    stem = tmp_path / "quality_vs_fraction"
    paths = plots.plot_quality_vs_fraction(
        quality_points(), metric_label="Test accuracy (fraction correct)", higher_is_better=True, stem=stem
    )
    assert_paper_size(check_written(paths, stem))


def test_quality_vs_fraction_log_scale_and_lower_is_better(tmp_path: Path) -> None:
    points = [dict(p, fraction=p["fraction"] / 10) for p in quality_points() if p["method"] != "full"]
    points.append({"method": "full", "fraction": 1.0, "quality": 0.4, "quality_sd": 0.0, "n": 1})
    stem = tmp_path / "log"
    paths = plots.plot_quality_vs_fraction(
        points, metric_label="Test loss (nats/token)", higher_is_better=False, stem=stem, title="Loss", **FAST
    )
    check_written(paths, stem, ("png",))


def test_quality_vs_compute(tmp_path: Path) -> None:
    stem = tmp_path / "quality_vs_compute"
    paths = plots.plot_quality_vs_compute(
        quality_points(),
        metric_label="Test accuracy (fraction correct)",
        higher_is_better=True,
        stem=stem,
        title="synthetic_math",
    )
    assert_paper_size(check_written(paths, stem))


def test_learning_curves_one_panel_and_small_multiples(tmp_path: Path) -> None:
    few = [curve(f"{m} @ 0.3", i) for i, m in enumerate(METHODS)] + [curve("full", 4)]
    stem = tmp_path / "few"
    assert_paper_size(check_written(plots.plot_learning_curves(few, stem=stem), stem))
    many = [curve(f"{m} @ {b}", i + j) for i, m in enumerate(METHODS) for j, b in enumerate(BUDGETS)]
    stem = tmp_path / "many"
    paths = plots.plot_learning_curves(many + [curve("full", 3)], stem=stem, title="by budget", **FAST)
    assert_paper_size(check_written(paths, stem, ("png",)), dpi=FAST["dpi"])


def test_level_histograms(tmp_path: Path) -> None:
    stem = tmp_path / "levels"
    paths = plots.plot_level_histograms(
        {m: level_shares(i) for i, m in enumerate(METHODS)},
        stem=stem,
        reference={"1": 0.2, "2": 0.25, "3": 0.22, "4": 0.18, "5": 0.15},
        title="budget 0.3",
    )
    assert_paper_size(check_written(paths, stem))


def test_round_histograms(tmp_path: Path) -> None:
    stem = tmp_path / "rounds"
    paths = plots.plot_round_histograms(
        {"p3": round_counts(6), "p3_no_dpp": round_counts(4), "spl": round_counts(6)}, stem=stem, title="x"
    )
    assert_paper_size(check_written(paths, stem))


def test_admitted_share(tmp_path: Path) -> None:
    stem = tmp_path / "pace"
    series = {
        "p3": pace_rows(10),
        "p3_no_dpp": pace_rows(10, 0.01),
        "spl": pace_rows(6, 0.02, floor_until=-1),
    }
    paths = plots.plot_admitted_share(
        series, stem=stem, budget_fraction=0.3, title="p3_synthetic, budget 0.3"
    )
    assert_paper_size(check_written(paths, stem))
    svg = stem.with_name("pace.svg").read_text()
    assert "floor raised the admitted" in svg and "scheduled share" in svg and "budget (share" in svg


def test_diversity(tmp_path: Path) -> None:
    stem = tmp_path / "diversity"
    paths = plots.plot_diversity(
        diversity_panels(["p3", "dpp"], 10),
        stem=stem,
        variants=["DPP pick", "top-k by quality", "uniform random"],
        seeds="mean over 3 seeds",
        title="p3_synthetic, budget 0.3",
    )
    assert_paper_size(check_written(paths, stem))


def test_overlap(tmp_path: Path) -> None:
    stem = tmp_path / "overlap"
    paths = plots.plot_overlap(symmetric(4), [*METHODS, "density"], stem=stem, title="budget 0.3")
    image = check_written(paths, stem)
    assert image.shape[0] >= 2.0 * plots.DPI and image.shape[1] >= 2.5 * plots.DPI


def test_defect_shares_by_method_and_by_run_label(tmp_path: Path) -> None:
    pool = {"noisy": 0.08, "junk": 0.06, "duplicate": 0.1}
    shares = {m: {k: v + 0.01 * i for k, v in pool.items()} for i, m in enumerate(METHODS)}
    stem = tmp_path / "defects"
    paths = plots.plot_defect_shares(shares, stem=stem, pool=pool, **FAST)
    assert_paper_size(check_written(paths, stem, ("png",)), dpi=FAST["dpi"])
    # run labels "method @ budget" (and "full"), the pool as {label: shares}: a panel per defect kind
    labelled = {f"{m} @ {b}": dict(pool) for m in METHODS for b in BUDGETS} | {"full": dict(pool)}
    stem = tmp_path / "defects_by_budget"
    paths = plots.plot_defect_shares(labelled, stem=stem, pool={"pool": pool}, title="text_mix")
    assert_paper_size(check_written(paths, stem))


# ----------------------------------------------------------------------------------------- edge cases


def test_empty_inputs_write_nothing(tmp_path: Path) -> None:
    stem = tmp_path / "empty"
    nan_point = {"method": "p3", "fraction": math.nan, "quality": 0.1, "quality_sd": 0.0, "n": 1}
    calls = [
        lambda: plots.plot_quality_vs_fraction([], metric_label="a", higher_is_better=True, stem=stem),
        lambda: plots.plot_quality_vs_fraction(
            [nan_point], metric_label="a", higher_is_better=True, stem=stem
        ),
        lambda: plots.plot_quality_vs_compute([], metric_label="a", higher_is_better=True, stem=stem),
        lambda: plots.plot_learning_curves([], stem=stem),
        lambda: plots.plot_learning_curves([{"label": "p3", "x": [], "y": [], "y_sd": None}], stem=stem),
        lambda: plots.plot_level_histograms({}, stem=stem),
        lambda: plots.plot_level_histograms({"p3": {}}, stem=stem),
        lambda: plots.plot_round_histograms({}, stem=stem),
        lambda: plots.plot_round_histograms({"p3": []}, stem=stem),
        lambda: plots.plot_overlap([], [], stem=stem),
        lambda: plots.plot_defect_shares({}, stem=stem),
        lambda: plots.plot_defect_shares({"p3": {}}, stem=stem),
        lambda: plots.plot_admitted_share({}, stem=stem),
        lambda: plots.plot_admitted_share({"p3": [{"round": 0, "admitted": math.nan}]}, stem=stem),
        lambda: plots.plot_diversity([], stem=stem),
        lambda: plots.plot_diversity(
            [{"title": "x", "series": {"p3": {"DPP pick": {0: math.nan}}}}], stem=stem
        ),
    ]
    for call in calls:
        assert call() == []
    assert list(tmp_path.iterdir()) == []


def test_single_point_single_method_nan_sd_long_name(tmp_path: Path) -> None:
    point = {
        "method": LONG,
        "budget": "0.3",
        "fraction": 0.3,
        "compute": 3e6,
        "compute_sd": math.nan,
        "quality": 0.5,
        "quality_sd": math.nan,
        "n": 1,
    }
    for name, function in [
        ("fraction", plots.plot_quality_vs_fraction),
        ("compute", plots.plot_quality_vs_compute),
    ]:
        stem = tmp_path / name
        paths = function([point], metric_label="Accuracy", higher_is_better=True, stem=stem, **FAST)
        check_written(paths, stem, ("png",))
    single = {"label": f"{LONG} @ 0.3", "x": [100.0], "y": [2.5], "y_sd": [math.nan]}
    gappy = {
        "label": "p3 @ 0.3",
        "x": [1.0, 2.0, 3.0],
        "y": [3.0, math.nan, 2.0],
        "y_sd": [0.1, 0.1, math.nan],
    }
    stem = tmp_path / "curve"
    check_written(plots.plot_learning_curves([single, gappy], stem=stem, **FAST), stem, ("png",))
    stem = tmp_path / "levels"
    check_written(plots.plot_level_histograms({LONG: {"3": 1.0}}, stem=stem, **FAST), stem, ("png",))
    stem = tmp_path / "rounds"
    rounds = {LONG: [{"round": 0, "counts": {"1": 5}}, {"round": 1, "counts": {}}]}
    check_written(plots.plot_round_histograms(rounds, stem=stem, **FAST), stem, ("png",))
    stem = tmp_path / "overlap"
    check_written(plots.plot_overlap([[math.nan]], [LONG], stem=stem, **FAST), stem, ("png",))
    stem = tmp_path / "defects"
    shares = {LONG: {"noisy": 0.1}, "p3": {"junk": math.nan}}
    check_written(plots.plot_defect_shares(shares, stem=stem, pool={"noisy": 0.05}, **FAST), stem, ("png",))
    # one round, one seed, no scheduled share or floor, an unknown budget; a gap in a diversity series
    stem = tmp_path / "pace"
    one = {LONG: [{"round": 0, "admitted": 0.2, "admitted_sd": math.nan, "n": 1}]}
    check_written(plots.plot_admitted_share(one, stem=stem, budget_fraction=math.nan, **FAST), stem, ("png",))
    stem = tmp_path / "diversity"
    panel = {"title": LONG, "series": {LONG: {"DPP pick": {0: 0.1, 1: math.nan, 2: 0.3}}}}
    check_written(plots.plot_diversity([panel], stem=stem, **FAST), stem, ("png",))


def test_many_methods(tmp_path: Path) -> None:
    methods = [*SAMPLERS, "full", LONG]
    rng = np.random.default_rng(1)
    points = [
        {
            "method": m,
            "budget": str(b),
            "fraction": b,
            "compute": b * 1e8,
            "compute_sd": 0.0,
            "quality": float(rng.uniform(0.2, 0.6)),
            "quality_sd": 0.01,
            "n": 2,
        }
        for m in methods
        for b in (0.1, 0.2, 0.4)
    ]
    kw = {"metric_label": "Accuracy", "higher_is_better": True, **FAST}
    for name, function in [
        ("fraction", plots.plot_quality_vs_fraction),
        ("compute", plots.plot_quality_vs_compute),
    ]:
        stem = tmp_path / name
        check_written(function(points, stem=stem, **kw), stem, ("png",))
    curves = [curve(f"{m} @ {b}", i / 4) for i, m in enumerate(methods) for b in (0.1, 0.2)]
    stem = tmp_path / "curves"
    check_written(plots.plot_learning_curves(curves, stem=stem, **FAST), stem, ("png",))
    stem = tmp_path / "levels"
    shares = {m: level_shares(i % 5) for i, m in enumerate(methods)}
    check_written(plots.plot_level_histograms(shares, stem=stem, **FAST), stem, ("png",))
    stem = tmp_path / "overlap"
    check_written(plots.plot_overlap(symmetric(len(methods)), methods, stem=stem, **FAST), stem, ("png",))
    stem = tmp_path / "defects"
    defects = {m: {"noisy": 0.01 * i, "junk": 0.02} for i, m in enumerate(methods)}
    check_written(plots.plot_defect_shares(defects, stem=stem, **FAST), stem, ("png",))
    stem = tmp_path / "pace"
    pace = {m: pace_rows(15, 0.002 * i) for i, m in enumerate(methods)}
    check_written(plots.plot_admitted_share(pace, stem=stem, budget_fraction=0.1, **FAST), stem, ("png",))
    stem = tmp_path / "diversity"
    check_written(plots.plot_diversity(diversity_panels(methods, 15), stem=stem, **FAST), stem, ("png",))


def test_bad_shapes_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shape"):
        plots.plot_overlap([[1.0, 0.5]], ["a", "b"], stem=tmp_path / "x")
    with pytest.raises(ValueError, match="length"):
        plots.plot_learning_curves(
            [{"label": "a", "x": [1, 2], "y": [1.0], "y_sd": None}], stem=tmp_path / "x"
        )
    assert list(tmp_path.iterdir()) == []


def test_long_titles_wrap_clear_of_the_legend() -> None:
    from matplotlib.lines import Line2D

    from p3bench.report.plot_style import add_legend, add_title, new_figure

    title = "p3_synthetic_sweep / synthetic_math (tiny, iso_epoch, a long variant label), budget 0.3"
    for panels in (False, True):
        fig, axes = new_figure()
        axes[0, 0].plot([0, 1], [0, 1])
        add_legend(
            fig, [Line2D([], [])], ["perplexity_xxl @ 0.3 with a long label"], title="mean over 3 seeds"
        )
        add_title(fig, title, panels=panels)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        text = fig._suptitle if panels else axes[0, 0].title
        assert "\n" in text.get_text() and text.get_text().replace("\n", " ") == title
        assert not text.get_window_extent(renderer).overlaps(fig.legends[0].get_window_extent(renderer))
    # a short title stays on one line
    fig, axes = new_figure()
    add_title(fig, "budget 0.3")
    assert axes[0, 0].title.get_text() == "budget 0.3"


def test_stem_with_dots_and_new_folder(tmp_path: Path) -> None:
    stem = tmp_path / "section" / "overlap_b0.3"
    paths = plots.plot_overlap(symmetric(2), ["a", "b"], stem=stem, dpi=50)
    assert [p.name for p in paths] == ["overlap_b0.3.png", "overlap_b0.3.svg"]


def test_no_pyplot_state_and_threads(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    errors: list[BaseException] = []

    def draw(k: int) -> None:
        try:
            stem = tmp_path / f"t{k}"
            check_written(
                plots.plot_overlap(symmetric(3, k), ["a", "b", "c"], stem=stem, **FAST), stem, ("png",)
            )
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=draw, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert plt.get_fignums() == before


# ------------------------------------------------------------------------------------ pure functions


def naive_front(costs: np.ndarray, qualities: np.ndarray, higher_is_better: bool) -> list[int]:
    q = qualities if higher_is_better else -qualities
    valid = np.isfinite(costs) & np.isfinite(q)
    front = []
    for i in np.flatnonzero(valid):
        dominated = any(
            j != i and costs[j] <= costs[i] and q[j] >= q[i] and (costs[j] < costs[i] or q[j] > q[i])
            for j in np.flatnonzero(valid)
        )
        if not dominated:
            front.append(int(i))
    return front


def test_pareto_front_matches_brute_force() -> None:
    rng = np.random.default_rng(2024)
    for case in range(400):
        n = int(rng.integers(0, 25))
        if case % 2:  # a coarse grid: many ties
            costs = rng.integers(0, 5, n).astype(float)
            qualities = rng.integers(0, 5, n).astype(float)
        else:
            costs, qualities = rng.uniform(0, 1, n), rng.normal(0, 1, n)
        if n and case % 5 == 0:
            costs[rng.integers(0, n)] = np.nan
            qualities[rng.integers(0, n)] = np.inf
        higher = bool(case % 3)
        expected = naive_front(costs, qualities, higher)
        assert plots.pareto_front(list(zip(costs, qualities, strict=True)), higher) == expected
        as_dicts = [{"fraction": c, "quality": q} for c, q in zip(costs, qualities, strict=True)]
        assert plots.pareto_front(as_dicts, higher) == expected


def test_pareto_front_small_cases() -> None:
    assert plots.pareto_front([], True) == []
    assert plots.pareto_front([(0.5, 1.0)], True) == [0]
    assert plots.pareto_front([(0.1, 0.3), (0.1, 0.3), (0.5, 0.3), (1.0, 0.9)], True) == [0, 1, 3]
    assert plots.pareto_front([(0.1, 2.0), (0.5, 1.0), (1.0, 1.5)], False) == [0, 1]
    assert plots.pareto_front([{"compute": 1, "quality": 1}], True, x_key="compute") == [0]


def test_method_styles_deterministic_and_distinct() -> None:
    methods = [*SAMPLERS, "full"]
    assert len(methods) == 20
    styles = plots.method_styles(methods)
    assert styles == plots.method_styles(reversed(methods)) == plots.method_styles(methods + methods[:3])
    assert len({(s.color, s.marker) for s in styles.values()}) == 20
    assert len({(s.color, s.hatch) for s in styles.values()}) == 20
    assert all(s.color in plots.PALETTE and s.marker in plots.MARKERS for s in styles.values())
    assert plots.method_colors(methods) == {m: s.color for m, s in styles.items()}
    # ten methods or fewer: ten distinct colours
    assert len(set(plots.method_colors(SAMPLERS[:10]).values())) == 10
    assert len({(s.color, s.marker) for s in plots.method_styles(f"m{i}" for i in range(80)).values()}) == 80


def test_format_tokens() -> None:
    assert [plots.format_tokens(v) for v in (500, 2e4, 1e6, 2.5e9, 1e12)] == [
        "500",
        "20k",
        "1M",
        "2.5B",
        "1T",
    ]
    assert plots.format_tokens(0) == "" and plots.format_tokens(math.nan) == ""
