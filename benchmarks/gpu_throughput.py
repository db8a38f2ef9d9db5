"""Training and scoring throughput and model FLOPs utilisation (MFU) of real ``p3bench`` runs, method by
method, from each run's ``results.json`` (``compute.throughput``, :mod:`p3bench.throughput`).

By default: the embedded default's method (``random``) and one dynamic method (``p3``: a likelihood
scoring pass over the pool every epoch) on one GPU in bf16 mixed precision (``trainer=gpu``) with the
113M-parameter Llama of ``conf/model/llama_113m.yaml``. Each run is a fresh ``p3bench`` process; the
table gives, for training steps and for the run model's scoring passes, examples/s, tokens/s, model
FLOP/s and MFU (model FLOPs ``6N`` per training token and ``2N`` per scoring token over the device's
peak from Lightning's table; null on a device it does not know, such as a CPU).

    python benchmarks/gpu_throughput.py --out /tmp/gpu_throughput                # one GPU, bf16, 113M
    python benchmarks/gpu_throughput.py --out /tmp/tp --trainer cpu --model micro \\
        --overrides debug=smoke                                                   # tried on a CPU
    python benchmarks/gpu_throughput.py --out /tmp/tp --overrides trainer.max_epochs=2 budget=0.5

Writes ``OUT.md`` and ``OUT.json`` (atomically) and the runs under ``OUT_runs/``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from p3bench.utils.io import atomic_write_text

DEFAULT_METHODS = ("random", "p3")


def run_one(method: str, run_dir: Path, trainer: str, model: str, overrides: list[str]) -> dict[str, Any]:
    """One ``p3bench`` run in a fresh process; its ``compute.throughput`` with the wall time."""
    command = [
        sys.executable,
        "-m",
        "p3bench",
        f"method={method}",
        f"trainer={trainer}",
        f"model={model}",
        "progress=false",
        "logger=none",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    env = {**os.environ, "WANDB_MODE": "offline"}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"p3bench method={method} failed (exit {done.returncode}): {tail[0]}")
    results = json.loads((run_dir / "results.json").read_text())
    throughput = results["compute"]["throughput"]
    return {"method": method, "wall_s": round(wall, 2), "run_dir": str(run_dir), **throughput}


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(rows: list[dict[str, Any]]) -> str:
    first = rows[0]
    lines = [
        f"Device: {first['device']}, precision {first['precision']}, {first['world_size']} process(es); "
        f"{first['non_embedding_parameters']:,} non-embedding parameters; peak FLOP/s per device "
        f"(Lightning's table): {_fmt(first['peak_flops_per_device'], '.3g')} for training, "
        f"{_fmt(first['scoring_peak_flops_per_device'], '.3g')} for scoring in {first['scoring_dtype']}.",
        "",
        "| method | pass | examples | tokens | seconds | examples/s | tokens/s | model FLOP/s | MFU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for kind in ("train", "scoring"):
            r = row[kind]
            if not r["examples"]:
                continue
            lines.append(
                f"| {row['method']} | {kind} | {r['examples']:,} | {r['tokens']:,} | {r['seconds']:.2f} | "
                f"{_fmt(r['examples_per_s'], ',.1f')} | {_fmt(r['tokens_per_s'], ',.0f')} | "
                f"{_fmt(r['model_flops_per_s'], '.3g')} | {_fmt(r['mfu'], '.1%')} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.md, OUT.json and OUT_runs/")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--trainer", default="gpu", help="a conf/trainer config (gpu: one GPU, bf16-mixed)")
    parser.add_argument("--model", default="llama_113m", help="a conf/model config")
    parser.add_argument("--overrides", nargs="*", default=[], help="more p3bench overrides for every run")
    args = parser.parse_args(argv)
    runs = args.out.parent / f"{args.out.name}_runs"
    rows = [
        run_one(method, runs / method, args.trainer, args.model, list(args.overrides))
        for method in args.methods
    ]
    result = {"trainer": args.trainer, "model": args.model, "overrides": args.overrides, "runs": rows}
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
