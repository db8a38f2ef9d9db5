"""Throughput of the APPS harness and the cost of its isolation, on the real APPS subset.

    python benchmarks/apps_harness.py --allow-code-execution [--workers 2] [--data PATH]
        [--overhead-programs 60]

1. Throughput: the first reference solution of every problem, all tests, through
   :func:`p3bench.execution.apps.check_programs` on ``--workers`` workers: programs and tests per second,
   and the strict accuracy per difficulty (APPS, Hendrycks et al., 2021, arXiv 2105.09938).
2. Overhead per program, one at a time, side by side on the same standard-input programs with their first
   test's input:
   - ``bare``: ``subprocess.run([python, "-c", program])``, no isolation at all;
   - ``sandbox``: :meth:`p3bench.execution.Sandbox.run_python` (the isolation level detected here, e.g.
     bubblewrap with namespaces and the program's read-only view, behind an init, as its own uid, with a
     cgroup, rlimits, a scrubbed environment and a fresh working directory);
   - ``no_cgroup``: the same sandbox without the per-run memory cgroup (``use_cgroup=false``);
   - ``harness``: :func:`~p3bench.execution.apps.check_program` on that one test (the sandbox plus the APPS
     runner, the forked test process and the output comparison).

The last line is a JSON summary. Running it executes the reference programs: it refuses without
``--allow-code-execution`` (or ``P3BENCH_ALLOW_CODE_EXECUTION=1``). ``benchmarks/sandbox_cost.py`` breaks
the sandbox's cost down further.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from p3bench.errors import P3BenchError
from p3bench.execution import (
    Sandbox,
    apps_scores,
    configure_execution,
    isolation_report,
    require_code_execution,
)
from p3bench.execution.apps import check_program, check_programs

DEFAULT_DATA = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "apps" / "apps_mini_val_150.jsonl"
)


def load(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            row["tests"] = json.loads(row["input_output"])
            row["program"] = json.loads(row["solutions"])[0]
            rows.append(row)
    return rows


def throughput(rows: list[dict], workers: int) -> dict:
    items = [(row["program"], row["tests"]) for row in rows]
    started = time.perf_counter()
    results = check_programs(items, workers=workers)
    elapsed = time.perf_counter() - started
    n_tests = sum(r.n_tests for r in results)
    scores = apps_scores(results, [row["difficulty"] for row in rows])
    return {
        "workers": workers,
        "programs": len(items),
        "tests": n_tests,
        "seconds": round(elapsed, 2),
        "programs_per_s": round(len(items) / elapsed, 2),
        "tests_per_s": round(n_tests / elapsed, 2),
        "strict_accuracy": {k: round(v["strict_accuracy"], 4) for k, v in scores.items()},
        "test_case_average": {k: round(v["test_case_average"], 4) for k, v in scores.items()},
    }


def _stdin_of(tests: dict) -> str:
    value = tests["inputs"][0]
    return "\n".join(map(str, value)) if isinstance(value, list) else str(value)


def overhead(rows: list[dict], n_programs: int) -> dict:
    chosen = [row for row in rows if not row["tests"].get("fn_name")][:n_programs]
    sandbox = Sandbox()
    no_cgroup = Sandbox(use_cgroup=False)
    python = sandbox.python
    times: dict[str, list[float]] = defaultdict(list)
    for row in chosen:
        stdin = _stdin_of(row["tests"]).encode()
        one_test = {"inputs": row["tests"]["inputs"][:1], "outputs": row["tests"]["outputs"][:1]}
        started = time.perf_counter()
        subprocess.run(
            [python, "-c", row["program"]], input=stdin, capture_output=True, timeout=60, check=False
        )
        times["bare"].append(time.perf_counter() - started)
        started = time.perf_counter()
        sandbox.run_python(row["program"], stdin, timeout_s=60)
        times["sandbox"].append(time.perf_counter() - started)
        started = time.perf_counter()
        no_cgroup.run_python(row["program"], stdin, timeout_s=60)
        times["no_cgroup"].append(time.perf_counter() - started)
        started = time.perf_counter()
        check_program(row["program"], one_test, sandbox=sandbox)
        times["harness"].append(time.perf_counter() - started)
    summary: dict = {"programs": len(chosen), "python": python}
    for name, values in times.items():
        summary[name] = {
            "median_ms": round(1000 * statistics.median(values), 1),
            "mean_ms": round(1000 * statistics.fmean(values), 1),
        }
    for name in ("sandbox", "no_cgroup", "harness"):
        summary[f"{name}_overhead_median_ms"] = round(
            summary[name]["median_ms"] - summary["bare"]["median_ms"], 1
        )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--overhead-programs", type=int, default=60)
    parser.add_argument("--allow-code-execution", action="store_true")
    args = parser.parse_args(argv)
    if args.allow_code_execution:
        configure_execution(True)
    try:
        require_code_execution()
    except P3BenchError as err:
        print(f"error: {err} (or pass --allow-code-execution)", file=sys.stderr)
        return 2
    if not args.data.is_file():
        print(
            f"error: APPS data file not found: {args.data}: expected apps_mini_val_150.jsonl", file=sys.stderr
        )
        return 2
    rows = load(args.data)
    report = isolation_report()
    print(
        f"isolation: {report['mode']} ({report['tool']}) | network {report['network']} | cgroup {report['cgroup']}"
    )
    print(f"interpreter: {report['python']} (Python {report['python_version']})")
    speed = throughput(rows, args.workers)
    print(
        f"\nthroughput, {speed['workers']} workers: {speed['programs']} programs ({speed['tests']} tests) in "
        f"{speed['seconds']} s = {speed['programs_per_s']} programs/s, {speed['tests_per_s']} tests/s"
    )
    print("strict accuracy of the first reference solutions:", speed["strict_accuracy"])
    cost = overhead(rows, args.overhead_programs)
    print(f"\nper program, one at a time, {cost['programs']} standard-input programs, first test:")
    print(f"{'':<10}{'median ms':>12}{'mean ms':>12}{'overhead ms':>14}")
    for name in ("bare", "sandbox", "no_cgroup", "harness"):
        extra = "" if name == "bare" else f"{cost[name + '_overhead_median_ms']:>14}"
        print(f"{name:<10}{cost[name]['median_ms']:>12}{cost[name]['mean_ms']:>12}{extra}")
    print(
        json.dumps(
            {"isolation": report["mode"], "cgroup": report["cgroup"], "throughput": speed, "overhead": cost}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
