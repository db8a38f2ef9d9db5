"""Every speed benchmark side by side with its reference, in one process: a table of ratios.

Each row is one of ours next to one reference on the same data in the same process, timed by the
benchmark's own ``measure`` function (its CLI runs the same function):

- ``dpp_greedy.py``: DPP greedy MAP (``dpp_select``, cosine and rbf_blocked kernels) against the plain
  NumPy greedy on the explicit kernel; check: the same selection (rbf_blocked: the float64 blocked greedy
  identical, the float32 one, what ``dpp_select`` runs, >= 99% of the picks in common);
- ``density_sketch.py``: the LSH kernel-sum sketch against the exact kernel sums (check: Spearman >= 0.9)
  and against scikit-learn's ``KernelDensity`` (check: the exact Gaussian sums rank like scikit-learn's
  log-density, Spearman >= 0.99, i.e. the comparison is set up on the same kernel);
- ``submodular_fl.py``: facility location's lazy greedy against submodlib and apricot (check: the same
  objective value, i.e. the same picks up to exact ties);
- ``scoring_throughput.py``: the likelihood and step scoring passes against the raw forward of the same
  model on the same batches, under ``--scoring-processes`` gloo ranks (check: the scores equal one
  process's to a relative 1e-6);
- ``sandbox_cost.py``: a trivial program through the sandbox against a bare ``subprocess.run`` (check:
  the sandboxed program printed the right answer; needs ``--allow-code-execution``);
- ``reweighting_overhead.py``: the training step of IR-DRO and MidRanking against ERM (``full``) through
  the real Trainer (check: every method timed the same number of steps).

``ratio`` is always ours over the reference in seconds for the same work (below 1: ours is faster; for
scoring, the inverse of the throughput share; for the sandbox and reweighting, the overhead factor), and
``target`` is the benchmark's target in the same terms. The 1-minute load average before and after each
benchmark is recorded (the machine may be shared). ``--out PATH`` writes ``PATH.md`` and ``PATH.json``
(atomically); ``--quick``: small sizes (a couple of minutes in all); ``--tiny``: the smallest sizes (the
test suite's); default: each benchmark's own default sizes.

    python benchmarks/run_all.py --quick --allow-code-execution --out /tmp/ratios
    python benchmarks/run_all.py --allow-code-execution --out benchmarks/results/ratios
    python benchmarks/run_all.py --tiny --only dpp density --out /tmp/ratios_tiny
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import density_sketch  # noqa: E402
import dpp_greedy  # noqa: E402
import reweighting_overhead  # noqa: E402
import sandbox_cost  # noqa: E402
import scoring_throughput  # noqa: E402
import submodular_fl  # noqa: E402

BENCHMARKS: tuple[str, ...] = ("dpp", "density", "facility_location", "scoring", "sandbox", "reweighting")

#: Per benchmark and size, the keyword arguments of its ``measure`` (default: each script's own defaults).
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "default": {
        "dpp_cosine": {},
        "dpp_rbf": {"n": 10000, "k": 1000},
        "density": {},
        "facility_location": {},
        "scoring": {},
        "sandbox": {},
        "reweighting": {},
    },
    "quick": {
        "dpp_cosine": {"n": 5000, "k": 500, "repeat": 1},
        "dpp_rbf": {"n": 3000, "k": 500, "repeat": 1},
        "density": {"n": 100_000, "kde_n": 3000},
        "facility_location": {"n": 2000, "repeat": 1},
        "scoring": {"n": 1000, "repeats": 1},
        "sandbox": {"rounds": 5, "programs": 6, "repeats": 2},
        "reweighting": {
            "overrides": [
                "dataset.params.n_train=1000",
                "dataset.params.n_val=50",
                "dataset.params.n_test=50",
            ],
            "steps": 30,
            "warmup": 10,  # the first steps' start-up would dominate a shorter run
            "repeats": 1,
        },
    },
    "tiny": {
        "dpp_cosine": {"n": 600, "k": 60, "repeat": 1},
        "dpp_rbf": {"n": 600, "k": 100, "repeat": 1},
        "density": {"n": 0, "kde_n": 1000},
        "facility_location": {"n": 300, "repeat": 1},
        "scoring": {"n": 60, "repeats": 1, "batch_size": 16},
        "sandbox": {"rounds": 2, "programs": 2, "repeats": 1},
        "reweighting": {
            "overrides": [
                "dataset.params.n_train=200",
                "dataset.params.n_val=20",
                "dataset.params.n_test=20",
                "loader.batch_size=8",
            ],
            "steps": 3,
            "warmup": 1,
            "repeats": 1,
        },
    },
}


def _row(
    benchmark: str,
    name: str,
    ours: str,
    reference: str,
    size: str,
    ours_s: float,
    reference_s: float,
    target: float | None,
    check: str,
    check_ok: bool,
    **extra: Any,
) -> dict[str, Any]:
    ours_s, reference_s = float(f"{ours_s:.6g}"), float(f"{reference_s:.6g}")
    ratio = float(f"{ours_s / reference_s:.4g}") if reference_s > 0 else None
    return {
        "benchmark": benchmark,
        "row": name,
        "ours": ours,
        "reference": reference,
        "size": size,
        "ours_s": ours_s,
        "reference_s": reference_s,
        "ratio": ratio,
        "target": target,
        "meets_target": None if target is None or ratio is None else bool(ratio <= target),
        "check": check,
        "check_ok": bool(check_ok),
        **extra,
    }


def dpp_rows(sizes: dict[str, dict[str, Any]], log: Callable[[str], object]) -> list[dict[str, Any]]:
    cos = dpp_greedy.measure(kernel="cosine", log=log, **sizes["dpp_cosine"])
    rbf = dpp_greedy.measure(kernel="rbf_blocked", log=log, **sizes["dpp_rbf"])
    ref = "plain NumPy greedy (explicit float64 kernel, one matrix-vector product per pick)"
    common_share = rbf["agree_set_float32"] / max(1, rbf["picked"])
    return [
        _row(
            "dpp_greedy.py",
            "DPP greedy MAP, cosine kernel",
            "dpp_select (low-rank greedy)",
            ref,
            f"N={cos['n']} k={cos['k']} d={cos['d']}",
            cos["dpp_select_s"],
            cos["reference_s"],
            1 / 3,
            "same selection, same order",
            cos["same_selection"],
        ),
        _row(
            "dpp_greedy.py --kernel rbf_blocked",
            "DPP greedy MAP, rbf_blocked kernel",
            "dpp_select (blocked greedy, float32)",
            ref,
            f"N={rbf['n']} k={rbf['k']} d={rbf['d']}",
            rbf["dpp_select_s"],
            rbf["reference_s"],
            1 / 3,
            "float64 blocked greedy identical; float32 >= 99% of picks in common",
            rbf["same_selection_float64"] and common_share >= 0.99,
            float64_s=rbf["float64_s"],
            float32_picks_in_common=round(common_share, 4),
        ),
    ]


def density_rows(sizes: dict[str, Any], log: Callable[[str], object]) -> list[dict[str, Any]]:
    out = density_sketch.measure(log=log, **sizes)
    size = f"n={out['kde_n']} d={out['dim']}"
    extra = {"sketch_1m_s": out.get("sketch_s"), "sketch_speed_n": out["n"] or None}
    return [
        _row(
            "density_sketch.py",
            "density: LSH sketch vs exact sums",
            "lsh_kernel_sums",
            "exact p-stable kernel sums (NumPy, blocked)",
            size,
            out["kde_sketch_s"],
            out["kde_exact_s"],
            None,
            "Spearman(sketch, exact) >= 0.9",
            out["spearman_sketch_exact"] >= 0.9,
            spearman=out["spearman_sketch_exact"],
            **extra,
        ),
        _row(
            "density_sketch.py",
            "density: LSH sketch vs scikit-learn",
            "lsh_kernel_sums",
            "sklearn KernelDensity (gaussian, matched bandwidth)",
            size,
            out["kde_sketch_s"],
            out["kde_sklearn_s"],
            None,
            "Spearman(exact Gaussian sums, sklearn) >= 0.99 (same kernel)",
            out["spearman_gaussian_sklearn"] >= 0.99,
            spearman=out["spearman_sketch_sklearn"],
        ),
    ]


def facility_location_rows(sizes: dict[str, Any], log: Callable[[str], object]) -> list[dict[str, Any]]:
    out = submodular_fl.measure(log=log, **sizes)
    ours = out["ours"]
    rows = []
    for name, label, target in (
        ("submodlib", "submodlib FacilityLocationFunction (LazyGreedy)", 1.0),
        ("apricot", "apricot FacilityLocationSelection (lazy)", 0.5),
    ):
        theirs = out[name]
        same_value = abs(theirs["value"] - ours["value"]) <= 1e-6 * max(1.0, abs(ours["value"]))
        rows.append(
            _row(
                "submodular_fl.py",
                f"facility location vs {name}",
                "maximize('fl', optimizer='lazy')",
                label,
                f"n={out['n']} budget={out['budget']}",
                ours["median_s"],
                theirs["median_s"],
                target,
                "same objective value (same picks up to exact ties)",
                same_value,
                picks_in_common=theirs["common"],
                first_difference=theirs["first_difference"],
                first_difference_is_tie=theirs["tie"],
            )
        )
    return rows


def scoring_rows(sizes: dict[str, Any], processes: int, log: Callable[[str], object]) -> list[dict[str, Any]]:
    threads = max(1, (os.cpu_count() or 1) // processes)
    out = scoring_throughput.measure(processes=processes, threads=threads, log=log, **sizes)
    same = bool(out.get("same_scores", True))
    rows = []
    for name in scoring_throughput.SCORERS:
        rows.append(
            _row(
                "scoring_throughput.py",
                f"scoring: {name} pass vs raw forward",
                f"{name} scorer .score()",
                "the model's forward alone on the same batches",
                f"n={out['n']} tokens={out['tokens']} processes={processes} x {threads} threads",
                out[f"{name}_s"],
                out["raw_forward_s"],
                round(1 / 0.9, 4),
                "scores equal to one process's (rtol 1e-6)" if processes > 1 else "one process",
                same,
                throughput_share=out[f"{name}_ratio"],
            )
        )
    return rows


def sandbox_rows(sizes: dict[str, Any], log: Callable[[str], object]) -> list[dict[str, Any]]:
    out = sandbox_cost.measure(log=log, **sizes)
    bare, sandboxed = out["breakdown"]["bare"], out["breakdown"]["sandbox"]
    two = next(row for row in out["workers"] if row["workers"] == 2)
    return [
        _row(
            "sandbox_cost.py",
            "sandbox vs bare subprocess (one at a time, median wall)",
            f"Sandbox.run_python ({out['isolation']})",
            "subprocess.run of the same interpreter",
            f"{sizes.get('rounds', 40)} rounds",
            sandboxed["wall_ms"] / 1000,
            bare["wall_ms"] / 1000,
            1.5,
            "the sandboxed program printed its answer",
            True,
            cpu_ratio=sandboxed["cpu_ratio"],
        ),
        _row(
            "sandbox_cost.py",
            "sandbox vs bare subprocess (2 workers, per program)",
            "run_many on 2 workers",
            "a 2-thread pool of subprocess.run",
            f"{sizes.get('programs', 20)} programs",
            two["sandbox_ms_per_program"] / 1000,
            two["bare_ms_per_program"] / 1000,
            1.7,
            "the sandboxed program printed its answer",
            True,
        ),
    ]


def reweighting_rows(sizes: dict[str, Any], log: Callable[[str], object]) -> list[dict[str, Any]]:
    out = reweighting_overhead.measure(**sizes)
    log(json.dumps(out))
    steps = out["steps_kept_per_method"]
    ms = out["median_step_ms"]
    return [
        _row(
            "reweighting_overhead.py",
            f"reweighting: {method} step vs ERM",
            f"method={method} training step",
            "method=full (ERM) training step",
            f"{steps[method]} steps kept",
            ms[method] / 1000,
            ms["full"] / 1000,
            1.05,
            "same number of timed steps as ERM",
            steps[method] == steps["full"] and steps[method] > 0,
        )
        for method in ("irdro", "midranking")
    ]


def run(
    size: str = "default",
    only: tuple[str, ...] | list[str] = BENCHMARKS,
    *,
    allow_code_execution: bool = False,
    scoring_processes: int = 2,
    log: Callable[[str], object] = print,
) -> dict[str, Any]:
    """Run the chosen benchmarks at ``size`` (``default``, ``quick`` or ``tiny``); returns
    ``{"rows": [...], "errors": {...}, ...}``. A benchmark that fails leaves an error, not a row."""
    if size not in SIZES:
        raise ValueError(f"size={size!r}: expected one of {sorted(SIZES)}")
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        raise ValueError(f"--only {unknown}: expected some of {list(BENCHMARKS)}")
    sizes = SIZES[size]
    if allow_code_execution:
        from p3bench.execution import configure_execution

        configure_execution(True)
    runners: dict[str, Callable[[], list[dict[str, Any]]]] = {
        "dpp": lambda: dpp_rows(sizes, log),
        "density": lambda: density_rows(sizes["density"], log),
        "facility_location": lambda: facility_location_rows(sizes["facility_location"], log),
        "scoring": lambda: scoring_rows(sizes["scoring"], scoring_processes, log),
        "sandbox": lambda: sandbox_rows(sizes["sandbox"], log),
        "reweighting": lambda: reweighting_rows(sizes["reweighting"], log),
    }
    rows: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    started = time.perf_counter()
    for name in BENCHMARKS:
        if name not in only:
            continue
        log(f"\n=== {name} ({size}) load {os.getloadavg()[0]:.2f}")
        load_before, start = os.getloadavg()[0], time.perf_counter()
        try:
            new = runners[name]()
        except Exception as err:  # noqa: BLE001 - one failing benchmark must not lose the others' rows
            errors[name] = f"{type(err).__name__}: {err}"
            log(traceback.format_exc())
            continue
        seconds, load_after = time.perf_counter() - start, os.getloadavg()[0]
        for row in new:
            row.update(load_before=round(load_before, 2), load_after=round(load_after, 2))
            row["benchmark_wall_s"] = round(seconds, 1)
        rows.extend(new)
    return {
        "size": size,
        "cpus": os.cpu_count(),
        "wall_s": round(time.perf_counter() - started, 1),
        "rows": rows,
        "errors": errors,
    }


def markdown(result: dict[str, Any]) -> str:
    """The rows as a markdown table (ratio: ours / reference in seconds; below 1: ours is faster)."""
    lines = [
        f"Ratios, size `{result['size']}`, {result['cpus']} CPUs, {result['wall_s']} s in all. "
        "ratio = ours / reference in seconds for the same work (below 1: ours is faster).",
        "",
        "| row | size | ours s | reference s | ratio | target | meets | check | check ok | load before / after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        target = "" if r["target"] is None else f"<= {r['target']:.3g}"
        meets = "" if r["meets_target"] is None else ("yes" if r["meets_target"] else "no")
        lines.append(
            f"| {r['row']} | {r['size']} | {r['ours_s']:.4g} | {r['reference_s']:.4g} | {r['ratio']:.3g} | "
            f"{target} | {meets} | {r['check']} | {'yes' if r['check_ok'] else 'NO'} | "
            f"{r['load_before']} / {r['load_after']} |"
        )
    for name, err in result["errors"].items():
        lines.append(f"\n{name}: failed: {err}")
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the result private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results(result: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """``out`` with its ``.md`` / ``.json`` suffix (if any) replaced: both files, atomically."""
    stem = out.with_suffix("") if out.suffix in (".md", ".json") else out
    md, js = stem.parent / f"{stem.name}.md", stem.parent / f"{stem.name}.json"
    write_atomic(js, json.dumps(result, indent=2) + "\n")
    write_atomic(md, markdown(result))
    return md, js


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="small sizes (a couple of minutes in all)")
    group.add_argument("--tiny", action="store_true", help="the smallest sizes (what the test runs)")
    parser.add_argument("--only", nargs="*", default=list(BENCHMARKS), choices=BENCHMARKS)
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.md and OUT.json")
    parser.add_argument("--allow-code-execution", action="store_true", help="needed by the sandbox row")
    parser.add_argument("--scoring-processes", type=int, default=2, help="gloo ranks of the scoring rows")
    args = parser.parse_args(argv)
    size = "quick" if args.quick else "tiny" if args.tiny else "default"
    result = run(
        size,
        args.only,
        allow_code_execution=args.allow_code_execution,
        scoring_processes=args.scoring_processes,
    )
    md, js = write_results(result, args.out)
    print(markdown(result))
    print(f"wrote {md} and {js}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
