"""Scoring-pass throughput as a ratio of the raw forward throughput of the same model on the same batches.

The raw pass is the model's forward alone on pre-collated, length-bucketed batches under inference mode;
the scoring pass is ``LikelihoodScorer.score`` (collation, forward, per-example NLL, gathering), and
``StepScorer.score``. Target: ratio >= 0.9.

With ``--processes 2`` both run under ``torch.distributed`` (gloo, one CPU process per rank, ``--threads``
torch threads each): every rank forwards its share of the pool (the positions ``rank::world``, as
:func:`p3bench.scoring.base.shard` deals them), the scorers also gather the rows onto every rank, and the
time of a pass is from a barrier before it to a barrier after it. The scores are checked against those of
one process (the same model and pool built in the parent), and the single-process raw forward (with
``processes x threads`` threads) is reported beside it.

    python benchmarks/scoring_throughput.py                      # tiny model, synthetic_math 10,000
    python benchmarks/scoring_throughput.py --n 4000 --repeats 3
    python benchmarks/scoring_throughput.py --processes 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from p3bench.cli import CONFIG_DIR
from p3bench.data.synthetic_math import load_synthetic_math
from p3bench.models.collate import EncodedSubset, TrainCollator, encode_examples
from p3bench.models.factory import build_causal_lm
from p3bench.models.module import SelectionLM
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.scoring import ScoringItems, build_scorer
from p3bench.scoring.base import length_buckets, shard

SCORERS = ("likelihood", "steps")


@dataclass
class Setup:
    """The tiny model in eval mode and the pool's scoring items."""

    model: Any
    module: SelectionLM
    items: ScoringItems


def build(n: int, max_length: int) -> Setup:
    """The tiny config's model (seed 0, untrained) and ``n`` synthetic_math training examples."""
    tiny = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model" / "tiny.yaml"))
    splits = load_synthetic_math(n_train=n, n_val=10, n_test=10)
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=384)
    torch.manual_seed(0)
    model = build_causal_lm({"architecture": tiny["architecture"]}, tokenizer, offline=True)
    module = SelectionLM(model, tokenizer, partial(torch.optim.AdamW, lr=1e-3))
    module.eval()
    encoded = encode_examples(splits.train, tokenizer)
    items = ScoringItems(splits.train, encoded, list(range(len(splits.train))), tokenizer, max_length)
    return Setup(model, module, items)


def raw_batches(setup: Setup, batch_size: int) -> tuple[list[dict[str, torch.Tensor]], int]:
    """This process's share of the pool (all of it outside torch.distributed), collated into the scoring
    pass's length buckets, and its non-padding tokens."""
    items = setup.items
    positions, _, _ = shard(len(items))
    lengths = [items.encoded.num_tokens(items.indices[p], items.max_length) for p in positions]
    collate = TrainCollator(items.tokenizer.pad_token_id, items.max_length)
    subset = EncodedSubset(items.encoded, [items.indices[p] for p in positions])
    batches = [collate([subset[p] for p in b]) for b in length_buckets(lengths, batch_size)]
    return batches, sum(int(b["attention_mask"].sum()) for b in batches)


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _passes(setup: Setup, batch_size: int, repeats: int) -> dict[str, Any]:
    """Best-of-``repeats`` seconds of the raw forward and of each scorer (after one warm-up pass each),
    between barriers; the tokens of the whole pool and the scorers' scores."""
    batches, local_tokens = raw_batches(setup, batch_size)

    def raw() -> None:
        with torch.inference_mode():
            for b in batches:
                setup.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])

    def timed(fn: Callable[[], object]) -> float:
        best = float("inf")
        for _ in range(repeats):
            _barrier()
            start = time.perf_counter()
            fn()
            _barrier()
            best = min(best, time.perf_counter() - start)
        return best

    raw()  # warm-up
    out: dict[str, Any] = {"raw_forward_s": timed(raw), "scores": {}}
    tokens = 0
    for name in SCORERS:
        scorer = build_scorer(name, batch_size=batch_size, progress=False)
        result = scorer.score(setup.module, setup.items)  # warm-up (steps maps tokens to lines once)
        tokens = result.forward_tokens
        out[f"{name}_s"] = timed(lambda s=scorer: s.score(setup.module, setup.items))
        out["scores"][name] = np.asarray(result.scores)
    out["tokens"] = tokens
    out["local_tokens"] = local_tokens
    return out


def _rank_main(rank: int, world: int, init: str, args: dict[str, Any], result_path: str) -> None:
    torch.set_num_threads(args["threads"])
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        setup = build(args["n"], args["max_length"])
        out = _passes(setup, args["batch_size"], args["repeats"])
        if rank == 0:
            np.savez(
                result_path,
                **{k: v for k, v in out.items() if k != "scores"},
                **{f"score_{k}": v for k, v in out["scores"].items()},
            )
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(
    *,
    n: int = 10_000,
    batch_size: int = 250,
    max_length: int = 96,
    repeats: int = 3,
    threads: int = 2,
    processes: int = 1,
    log: Callable[[str], object] = print,
) -> dict[str, object]:
    """Raw forward and scoring seconds on the same pool; returns the summary the CLI prints as JSON
    (``{name}_ratio``: raw forward seconds over the scorer's, i.e. its share of the raw throughput).
    With ``processes > 1`` the passes run on that many gloo ranks of ``threads`` threads each and
    ``same_scores`` says whether every scorer's scores equal one process's (to a relative 1e-6: a rank
    batches other neighbours together, so the padding and the rounding differ)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads * processes)
    try:
        setup = build(n, max_length)
        # with several processes one run here is enough: its scores are the check, its time a side note
        single = _passes(setup, batch_size, repeats if processes == 1 else 1)
    finally:
        torch.set_num_threads(previous)
    summary: dict[str, object] = {
        "n": n,
        "processes": processes,
        "threads": threads,
        "tokens": single["tokens"],
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    if processes == 1:
        timing = single
    else:
        import torch.multiprocessing as mp

        spec = {
            "n": n,
            "batch_size": batch_size,
            "max_length": max_length,
            "repeats": repeats,
            "threads": threads,
        }
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "rank0.npz")
            init = f"tcp://127.0.0.1:{_free_port()}"
            mp.start_processes(
                _rank_main, args=(processes, init, spec, path), nprocs=processes, start_method="spawn"
            )
            with np.load(path) as saved:
                timing = {k: saved[k].item() for k in saved.files if not k.startswith("score_")}
                scores = {k[len("score_") :]: saved[k] for k in saved.files if k.startswith("score_")}
        # a rank's batches hold other neighbours (other padding), so scores agree to rounding, not bitwise
        same = all(np.allclose(scores[name], single["scores"][name], rtol=1e-6, atol=0) for name in SCORERS)
        max_diff = max(float(np.max(np.abs(scores[name] - single["scores"][name]))) for name in SCORERS)
        summary.update(
            single_process_raw_forward_s=round(single["raw_forward_s"], 3),
            same_scores=same,
            max_abs_score_difference=max_diff,
        )
        log(
            f"{processes} processes x {threads} threads; one process with {threads * processes} threads: "
            f"raw forward {single['tokens'] / single['raw_forward_s']:,.0f} tokens/s; "
            f"scores equal to one process's (rtol 1e-6): {same} (max abs difference {max_diff:.2e})"
        )
    raw_s = float(timing["raw_forward_s"])
    summary["raw_forward_s"] = round(raw_s, 3)
    tokens = int(summary["tokens"])
    for name in SCORERS:
        seconds = float(timing[f"{name}_s"])
        summary[f"{name}_s"] = round(seconds, 3)
        summary[f"{name}_ratio"] = round(raw_s / seconds, 3)
        log(
            f"{name:>10}: {tokens / seconds:,.0f} tokens/s  vs raw forward {tokens / raw_s:,.0f} tokens/s  "
            f"ratio {raw_s / seconds:.3f}"
        )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="pool size (synthetic_math train)")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument("--processes", type=int, default=1, help="gloo ranks (1: no torch.distributed)")
    args = parser.parse_args()
    summary = measure(
        n=args.n,
        batch_size=args.batch_size,
        max_length=args.max_length,
        repeats=args.repeats,
        threads=args.threads,
        processes=args.processes,
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
