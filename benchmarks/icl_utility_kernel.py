"""DELIFT's in-context utility kernel (p3bench.scoring.icl_utility, arXiv 2411.04425) on real Alpaca examples
with the tiny model: throughput, prefix reuse against whole pair sequences, full against k-nearest kernel.

1. Throughput: pairs/s and forward tokens/s of the kernel, next to the model's raw forward throughput
   (tokens/s of a plain length-bucketed batched forward, under inference mode, over the whole pair
   sequences of the same pairs, logits included).
2. Prefix reuse (the default) against the same kernel run on whole pair sequences, length-bucketed
   (``reuse_prefix=False``, the public code's way), on ``--targets`` targets x ``--candidates`` candidates,
   and against the pair-by-pair reference (one sequence a forward pass) on a smaller square: seconds and
   the largest absolute difference. Target: >= 1.5x.
3. The full kernel against the k-nearest one (MiniLM neighbours) on the pool: seconds, forward tokens, and
   the overlap of the facility-location selections at 30% (:func:`p3bench.algorithms.submodular.maximize`,
   lazy greedy on the min-max scaled kernels), with each selection's FL value on the full kernel.

The examples come from the project's Alpaca adapter (the Alpaca prompt template around each instruction, as
a run sees them), the tokenizer is the tiny model's local BPE (384 tokens) trained on the pool, and the
tiny model (conf/model/tiny.yaml; ``max_position_embeddings`` raised to ``--max-length``, since the Alpaca
pairs run to ~500 tokens) is trained for ``--train-steps`` steps on the pool first, so that its predictions
are not uniform.

Times are the process's CPU seconds (one thread: the compute, whatever else runs on the machine) and, in
brackets, wall seconds.

    OMP_NUM_THREADS=1 python benchmarks/icl_utility_kernel.py
    OMP_NUM_THREADS=1 python benchmarks/icl_utility_kernel.py --targets 60 --candidates 4 --reference 4 --n 24 --neighbours 5 --train-steps 20
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from p3bench.algorithms.submodular import maximize
from p3bench.cli import CONFIG_DIR
from p3bench.data.instruction import load_alpaca
from p3bench.models.factory import build_causal_lm
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.scoring.base import length_buckets
from p3bench.scoring.icl_utility import icl_utility_kernel, pairwise_utility_reference
from p3bench.scoring.icl_utility_prefix import live_pairs, pair_sequence
from p3bench.scoring.icl_utility_tokens import tokenize_segments

ALPACA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "alpaca" / "random_9k.json"


def warm_up(model: torch.nn.Module, tokenizer, examples, steps: int, max_length: int) -> float:
    """A few steps of next-token training on the pool's prompt + response (seconds)."""
    start = time.perf_counter()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.5e-3)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(steps):
        chosen = rng.choice(len(examples), 8, replace=False)
        texts = [examples[i].prompt + examples[i].target + tokenizer.eos_token for i in chosen]
        batch = tokenizer(
            texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length // 2
        )
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return time.perf_counter() - start


def raw_forward(model, tokenizer, targets, candidates, max_length: int, batch_size: int) -> tuple[float, int]:
    """Seconds and tokens of a plain batched forward over the whole pair sequences."""
    segments = tokenize_segments(tokenizer, targets, candidates)
    rows = [
        pair_sequence(segments, t, c, max_length).ids
        for c in range(len(candidates))
        for t in range(len(targets))
    ]
    batches = length_buckets([len(r) for r in rows], batch_size)
    tokens = sum(len(r) for r in rows)
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            width = max(len(rows[b]) for b in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, b in enumerate(batch):
                ids[r, : len(rows[b])] = torch.tensor(rows[b])
                mask[r, : len(rows[b])] = 1
            model(input_ids=ids, attention_mask=mask)
    return time.perf_counter() - start, tokens


def facility_location(kernel: np.ndarray, picked: np.ndarray) -> float:
    """``sum_i max_{j in A} K[i, j]`` (and 0)."""
    return float(np.maximum(kernel[:, picked].max(axis=1), 0.0).sum())


def truncation_report(tokenizer, examples, lengths=(256, 512, 1024, 2048)) -> dict:
    """The demonstration prefix's length and, per ``max_length``, the share of pool x pool pairs that keep
    nothing to score (tokenisation only, no model)."""
    segments = tokenize_segments(tokenizer, examples, examples)
    prefix = np.array([len(p) for p in segments.prefixes])
    n = len(examples)
    targets, candidates = np.repeat(np.arange(n), n), np.tile(np.arange(n), n)
    empty = {
        length: float(1.0 - live_pairs(segments, targets, candidates, length).mean()) for length in lengths
    }
    return {
        "prefix_median": float(np.median(prefix)),
        "prefix_p90": float(np.percentile(prefix, 90)),
        "empty": empty,
    }


def timed(fn):
    """``fn()``, its CPU seconds and its wall seconds."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return result, time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=200, help="targets of the reuse comparison")
    parser.add_argument("--candidates", type=int, default=8, help="candidates of the reuse comparison")
    parser.add_argument("--reference", type=int, default=8, help="square of the pair-by-pair reference")
    parser.add_argument("--n", type=int, default=80, help="pool of the full and k-nearest kernels")
    parser.add_argument("--neighbours", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    size = max(args.targets + args.candidates, args.n)
    splits = load_alpaca(
        data_files=str(ALPACA),
        val_size=10,
        test_size=10,
        max_train=size,
        skip_bad=True,
        similarity_embedder=None,
    )
    examples = splits.train[:size]
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in examples], vocab_size=384)
    tiny = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model" / "tiny.yaml"))
    architecture = {**tiny["architecture"], "max_position_embeddings": args.max_length}
    model = build_causal_lm({"architecture": architecture}, tokenizer, offline=True)
    trained_s = warm_up(model, tokenizer, examples, args.train_steps, args.max_length)
    options = {"max_length": args.max_length, "batch_size": args.batch_size, "block_size": args.block_size}
    summary: dict = {"examples": len(examples), "train_steps": args.train_steps, **options}
    print(
        f"{len(examples)} Alpaca examples; tiny model trained {args.train_steps} steps ({trained_s:.0f} s wall)"
    )
    truncation = truncation_report(tokenizer, examples)
    summary["truncation"] = truncation
    print(
        f"demonstration prefix: median {truncation['prefix_median']:.0f} tokens, 90th percentile "
        f"{truncation['prefix_p90']:.0f}; pairs with nothing to score: "
        + ", ".join(f"{share:.1%} at max_length {length}" for length, share in truncation["empty"].items())
    )

    # 1-2. throughput, and prefix reuse against whole sequences and the pair-by-pair reference
    targets, candidates = examples[: args.targets], examples[args.targets : args.targets + args.candidates]
    (_, raw_tokens), raw_cpu, raw_wall = timed(
        lambda: raw_forward(model, tokenizer, targets, candidates, args.max_length, args.batch_size)
    )
    reuse, reuse_cpu, reuse_wall = timed(
        lambda: icl_utility_kernel(model, tokenizer, targets, candidates, progress=False, **options)
    )
    whole, whole_cpu, whole_wall = timed(
        lambda: icl_utility_kernel(
            model, tokenizer, targets, candidates, reuse_prefix=False, progress=False, **options
        )
    )
    diff = float(np.abs(reuse.raw - whole.raw).max())
    small = examples[: args.reference]
    reference, reference_cpu, reference_wall = timed(
        lambda: pairwise_utility_reference(model, tokenizer, small, max_length=args.max_length)
    )
    small_reuse, small_cpu, small_wall = timed(
        lambda: icl_utility_kernel(model, tokenizer, small, progress=False, **options)
    )
    single, single_cpu, single_wall = timed(
        lambda: icl_utility_kernel(model, tokenizer, small, progress=False, **{**options, "batch_size": 1})
    )
    reference_diff = max(
        float(np.abs(small_reuse.raw - reference.raw).max()), float(np.abs(single.raw - reference.raw).max())
    )
    square = f"{args.reference}x{args.reference}"
    rows = [
        ("raw forward, whole pair sequences", raw_cpu, raw_wall, reuse.pairs, raw_tokens),
        ("kernel, prefix reuse", reuse_cpu, reuse_wall, reuse.pairs, reuse.forward_tokens),
        ("kernel, whole pair sequences", whole_cpu, whole_wall, whole.pairs, whole.forward_tokens),
        (
            f"pair-by-pair reference, {square}",
            reference_cpu,
            reference_wall,
            reference.pairs,
            reference.forward_tokens,
        ),
        (
            f"kernel, prefix reuse, {square}",
            small_cpu,
            small_wall,
            small_reuse.pairs,
            small_reuse.forward_tokens,
        ),
        (
            f"kernel, prefix reuse, {square}, batch 1",
            single_cpu,
            single_wall,
            single.pairs,
            single.forward_tokens,
        ),
    ]
    print(
        f"\n{len(targets)} targets x {len(candidates)} candidates, batch {args.batch_size}, max_length {args.max_length}"
    )
    print("| pass | CPU s (wall) | pairs/s | forward tokens | tokens/s | tokens/s over raw |")
    print("|---|---|---|---|---|---|")
    raw_rate = raw_tokens / raw_cpu
    for name, cpu, wall, pairs, tokens in rows:
        rate = tokens / cpu
        print(
            f"| {name} | {cpu:.1f} ({wall:.1f}) | {pairs / cpu:.1f} | {tokens:,} | {rate:,.0f} | {rate / raw_rate:.2f} |"
        )
    speedup = whole_cpu / reuse_cpu
    reference_speedup = reference_cpu / small_cpu
    single_speedup = reference_cpu / single_cpu
    whole_tokens = reuse.diagnostics["whole_pair_tokens"] + reuse.diagnostics["no_demo_tokens"]
    print(
        f"prefix reuse: {speedup:.2f}x the whole sequences' speed (max |diff| {diff:.1e}), {reference_speedup:.2f}x "
        f"the reference's at batch {args.batch_size}, {single_speedup:.2f}x at batch 1 (max |diff| {reference_diff:.1e}); {whole_tokens / reuse.forward_tokens:.2f}x fewer tokens; "
        f"{raw_cpu / reuse_cpu:.2f}x the raw forward's pairs/s"
    )
    summary["reuse"] = {
        "targets": len(targets),
        "candidates": len(candidates),
        "raw_cpu_s": round(raw_cpu, 2),
        "raw_tokens": raw_tokens,
        "reuse_cpu_s": round(reuse_cpu, 2),
        "reuse_tokens": reuse.forward_tokens,
        "whole_cpu_s": round(whole_cpu, 2),
        "whole_tokens": whole.forward_tokens,
        "speedup_over_whole": round(speedup, 3),
        "max_abs_diff_whole": diff,
        "reference_cpu_s": round(reference_cpu, 2),
        "speedup_over_reference": round(reference_speedup, 3),
        "speedup_over_reference_batch1": round(single_speedup, 3),
        "max_abs_diff_reference": reference_diff,
        "pairs_per_cpu_s": round(reuse.pairs / reuse_cpu, 2),
        "tokens_per_s_over_raw": round(reuse.forward_tokens / reuse_cpu / raw_rate, 3),
        "pairs_per_s_over_raw": round(raw_cpu / reuse_cpu, 3),
        "pairs_without_scored_tokens": reuse.diagnostics["pairs_without_scored_tokens"],
    }

    # 3. full against k-nearest kernel, and their facility-location selections
    pool = examples[: args.n]
    full, full_cpu, full_wall = timed(
        lambda: icl_utility_kernel(model, tokenizer, pool, progress=False, **options)
    )
    near, near_cpu, near_wall = timed(
        lambda: icl_utility_kernel(
            model, tokenizer, pool, neighbours=args.neighbours, progress=False, **options
        )
    )
    budget = int(round(args.budget * len(pool)))
    picks = {
        name: maximize("fl", kernel.scaled, budget).indices
        for name, kernel in (("full", full), ("k-nearest", near))
    }
    overlap = len(set(picks["full"].tolist()) & set(picks["k-nearest"].tolist())) / budget
    value = {name: facility_location(full.scaled, picked) for name, picked in picks.items()}
    rng = np.random.default_rng(0)
    random_values = [
        facility_location(full.scaled, rng.choice(len(pool), budget, replace=False)) for _ in range(100)
    ]
    print(f"\npool {len(pool)}: the full kernel against each target's {args.neighbours} nearest by MiniLM")
    print(
        f"| kernel | CPU s (wall) | pairs | forward tokens | FL value of its {args.budget:.0%} pick on the full kernel |"
    )
    print("|---|---|---|---|---|")
    for name, kernel, cpu, wall in (
        ("full", full, full_cpu, full_wall),
        ("k-nearest", near, near_cpu, near_wall),
    ):
        print(
            f"| {name} | {cpu:.1f} ({wall:.1f}) | {kernel.pairs:,} | {kernel.forward_tokens:,} | {value[name]:.2f} |"
        )
    print(f"| random pick (mean of 100) | | | | {np.mean(random_values):.2f} |")
    print(
        f"selections at {args.budget:.0%} ({budget} of {len(pool)}): overlap {overlap:.1%} "
        f"(two random picks overlap {args.budget:.0%} on average)"
    )
    summary["sparse"] = {
        "pool": len(pool),
        "neighbours": args.neighbours,
        "full_cpu_s": round(full_cpu, 2),
        "near_cpu_s": round(near_cpu, 2),
        "full_tokens": full.forward_tokens,
        "near_tokens": near.forward_tokens,
        "budget": budget,
        "overlap": round(overlap, 4),
        "fl_value_full": round(value["full"], 3),
        "fl_value_near": round(value["k-nearest"], 3),
        "fl_value_random_mean": round(float(np.mean(random_values)), 3),
        "pairs_without_scored_tokens_full": full.diagnostics["pairs_without_scored_tokens"],
    }
    print(json.dumps(summary))
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
