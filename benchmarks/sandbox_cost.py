"""What the sandbox costs a trivial program, and where that time goes, next to a bare subprocess.

    python benchmarks/sandbox_cost.py --allow-code-execution [--rounds 40] [--programs 40] [--mode auto]

1. Where the time goes, one program at a time, in interleaved rounds (so that a busy machine slows every
   variant alike): wall-clock median and minimum (the minimum is what an idle machine approaches) and CPU
   time (user + system of the child processes) per run of
   - ``bare``: ``subprocess.run([python, "-s", "-B", "-c", program])``, the same interpreter, no isolation;
   - ``+ entry point``: the same through the sandbox's entry point (in the form the level uses: compiled
     where it can be), still no isolation;
   - ``+ bwrap``: inside bubblewrap with the program's view and namespaces (bwrap level only), no init;
   - ``+ init``: the same behind the init (``/bin/sh`` as PID 1);
   - ``sandbox``: :meth:`p3bench.execution.Sandbox.run_python`: all of the above plus the run's uid, its
     cgroup, pipes and clean-up, in the detected (or ``--mode``) level;
   - ``sandbox, no cgroup``: the same without the per-run memory cgroup;
   - ``harness``: :func:`p3bench.execution.apps.check_program` on one test (the APPS runner, its forked test
     process and the comparison).
2. Joining a run's cgroup (where cgroups are in force), timed inside a child process that writes ``0`` to
   the ``tasks`` file (what the sandbox does with cgroup v1: only the writing thread moves) or to
   ``cgroup.procs`` (the whole process: the kernel waits for an RCU grace period first).
3. Throughput with one and two workers: ``--programs`` runs of the program, bare (a thread pool of
   ``subprocess.run``) and sandboxed (:func:`p3bench.execution.run_many`), alternating five times: median
   wall time per program.

The ratios to ``bare`` are the sandbox's cost. The last line is a JSON summary. It runs programs: it
refuses without ``--allow-code-execution`` (or ``P3BENCH_ALLOW_CODE_EXECUTION=1``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from p3bench.errors import P3BenchError
from p3bench.execution import Sandbox, configure_execution, require_code_execution, run_many
from p3bench.execution.apps import check_program
from p3bench.execution.cgroups import RunCgroup
from p3bench.execution.launch import (
    BOOTSTRAP,
    INIT,
    bwrap_command,
    compiled_hex,
    entry_spec,
    sandbox_env,
    script_source,
)

PROGRAM = "print(sum(range(10)))"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _variants(sandbox: Sandbox) -> dict[str, Callable[[], object]]:
    isolation, limits = sandbox.isolation, sandbox.limits
    python = isolation.python
    source = script_source("_sandbox_entry.py")
    entry = [python, "-s", "-B", "-c"]
    entry += [BOOTSTRAP, compiled_hex(source)] if isolation.bytecode else [source]
    entry.append(entry_spec(limits, None, None, None, frames=isolation.frames))

    def command(argv: list[str]) -> Callable[[], object]:
        return lambda: subprocess.run(argv, capture_output=True, env=sandbox_env("/tmp"), check=True)

    variants = {
        "bare": command([python, "-s", "-B", "-c", PROGRAM]),
        "+ entry point": command([*entry, "code", PROGRAM]),
    }
    if isolation.mode == "bwrap" and isolation.view is not None:
        read_fd, write_fd = os.pipe()  # bwrap writes its --info-fd here; never read
        bwrap = bwrap_command(
            isolation.tool["bwrap"] or "bwrap",
            isolation.view.bwrap_args(),
            limits,
            as_root=os.geteuid() == 0,
            info_fd=write_fd,
        )

        def inside(argv: list[str]) -> Callable[[], object]:
            return lambda: subprocess.run(
                argv, capture_output=True, env=sandbox_env("/tmp"), pass_fds=(write_fd,), check=True
            )

        variants["+ bwrap"] = inside([*bwrap, *entry, "code", PROGRAM])
        variants["+ init"] = inside([*bwrap, *INIT, *entry, "code", PROGRAM])
    no_cgroup = Sandbox(mode=isolation.mode, use_cgroup=False)
    tests = {"inputs": [""], "outputs": ["45"]}
    variants["sandbox"] = lambda: _checked(sandbox.run_python(PROGRAM))
    variants["sandbox, no cgroup"] = lambda: _checked(no_cgroup.run_python(PROGRAM))
    variants["harness"] = lambda: check_program(PROGRAM, tests, sandbox=sandbox)
    return variants


def _checked(result):
    if not result.ok or result.stdout != b"45\n":
        raise RuntimeError(f"the sandboxed program failed: {result}")
    return result


def breakdown(sandbox: Sandbox, rounds: int) -> dict[str, dict[str, float]]:
    variants = _variants(sandbox)
    for run in variants.values():  # warm up: caches, detection
        run()
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            cpu_before, started = _children_cpu(), time.perf_counter()
            run()
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(_children_cpu() - cpu_before)
    bare_wall, bare_cpu = statistics.median(wall["bare"]), statistics.mean(cpu["bare"])
    bare_min = min(wall["bare"])
    return {
        name: {
            "wall_ms": round(1000 * statistics.median(wall[name]), 2),
            "wall_ratio": round(statistics.median(wall[name]) / bare_wall, 2),
            "min_wall_ms": round(1000 * min(wall[name]), 2),
            "min_wall_ratio": round(min(wall[name]) / bare_min, 2),
            "cpu_ms": round(1000 * statistics.mean(cpu[name]), 2),
            "cpu_ratio": round(statistics.mean(cpu[name]) / bare_cpu, 2),
        }
        for name in variants
    }


def cgroup_join(sandbox: Sandbox, rounds: int) -> dict[str, float] | None:
    """Median milliseconds a child process takes to join a fresh run cgroup through each join file."""
    support = sandbox.isolation.cgroup
    if support is None:
        return None
    timer = "import os, sys, time; t = time.perf_counter(); os.write(int(sys.argv[1]), b'0'); print(time.perf_counter() - t)"
    files = ["cgroup.procs"] + (["tasks"] if support.version == 1 else [])
    times: dict[str, list[float]] = {name: [] for name in files}
    for _ in range(rounds):
        for name in files:
            cgroup = RunCgroup(support, memory_bytes=256 << 20, max_pids=16)
            fd = os.open(str(cgroup.directory / name), os.O_WRONLY)
            try:
                done = subprocess.run(
                    [sys.executable, "-c", timer, str(fd)], pass_fds=(fd,), capture_output=True, check=True
                )
                times[name].append(float(done.stdout))
            finally:
                os.close(fd)
                cgroup.remove()
            time.sleep(0.02)  # runs come some milliseconds apart
    return {name: round(1000 * statistics.median(values), 2) for name, values in times.items()}


def throughput(sandbox: Sandbox, programs: int, workers: int, repeats: int = 5) -> dict[str, float]:
    """Wall time per program of ``programs`` runs on ``workers``, bare and sandboxed, alternating
    ``repeats`` times (so that a busy machine slows both alike); medians over the repeats."""
    python = sandbox.python

    def bare(_: int) -> None:
        subprocess.run([python, "-s", "-B", "-c", PROGRAM], capture_output=True, check=True)

    def sandboxed(_: int) -> None:
        _checked(sandbox.run_python(PROGRAM))

    bare_s, sandbox_s = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(bare, range(programs)))
        bare_s.append((time.perf_counter() - started) / programs)
        started = time.perf_counter()
        run_many(sandboxed, range(programs), workers=workers)
        sandbox_s.append((time.perf_counter() - started) / programs)
    bare_ms, sandbox_ms = 1000 * statistics.median(bare_s), 1000 * statistics.median(sandbox_s)
    return {
        "workers": workers,
        "bare_ms_per_program": round(bare_ms, 2),
        "sandbox_ms_per_program": round(sandbox_ms, 2),
        "ratio": round(sandbox_ms / bare_ms, 2),
    }


def measure(
    *,
    rounds: int = 40,
    programs: int = 20,
    mode: str = "auto",
    repeats: int = 5,
    log: Callable[[str], object] = print,
) -> dict[str, object]:
    """The breakdown, the cgroup join and the throughput on 1 and 2 workers; returns the summary the CLI
    prints as JSON, ``log`` gets the tables. Code execution must be allowed (``configure_execution``)."""
    require_code_execution()
    sandbox = Sandbox(mode=mode)
    report = sandbox.report()
    log(f"isolation: {report['mode']} ({report['tool']}) | cgroup {report['cgroup']}")
    log(f"interpreter: {report['python']} (Python {report['python_version']}); load {os.getloadavg()}")
    parts = breakdown(sandbox, rounds)
    log(f"\none program at a time, {rounds} interleaved rounds: {PROGRAM!r}")
    log(f"{'':<22}{'wall ms':>10}{'x bare':>9}{'min ms':>10}{'x bare':>9}{'cpu ms':>10}{'x bare':>9}")
    for name, row in parts.items():
        log(
            f"{name:<22}{row['wall_ms']:>10}{row['wall_ratio']:>9}{row['min_wall_ms']:>10}"
            f"{row['min_wall_ratio']:>9}{row['cpu_ms']:>10}{row['cpu_ratio']:>9}"
        )
    joins = cgroup_join(sandbox, 20)
    if joins is not None:
        log("\njoining a run's cgroup, median ms: " + ", ".join(f"{k} {v}" for k, v in joins.items()))
    pools = [throughput(sandbox, programs, workers, repeats) for workers in (1, 2)]
    log(f"\n{programs} programs, {repeats} times, median wall time per program:")
    for row in pools:
        log(
            f"{row['workers']} worker(s): bare {row['bare_ms_per_program']} ms, sandbox "
            f"{row['sandbox_ms_per_program']} ms: x{row['ratio']}"
        )
    return {
        "isolation": report["mode"],
        "load": os.getloadavg(),
        "breakdown": parts,
        "cgroup_join_ms": joins,
        "workers": pools,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--programs", type=int, default=20)
    parser.add_argument("--mode", default="auto", help="isolation level (default: the detected one)")
    parser.add_argument("--allow-code-execution", action="store_true")
    args = parser.parse_args(argv)
    if args.allow_code_execution:
        configure_execution(True)
    try:
        summary = measure(rounds=args.rounds, programs=args.programs, mode=args.mode)
    except P3BenchError as err:
        print(f"error: {err} (or pass --allow-code-execution)", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
