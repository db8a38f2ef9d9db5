"""Scoring-pass throughput as a ratio of the raw forward throughput of the same model on the same batches.

The raw pass is the model's forward alone on pre-collated, length-bucketed batches under inference mode;
the scoring pass is ``LikelihoodScorer.score`` (collation, forward, per-example NLL, gathering), and
``StepScorer.score``. Target: ratio >= 0.9.

    python benchmarks/scoring_throughput.py                      # tiny model, synthetic_math 10,000
    python benchmarks/scoring_throughput.py --n 4000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial

import torch
from omegaconf import OmegaConf

from p3bench.cli import CONFIG_DIR
from p3bench.data.synthetic_math import load_synthetic_math
from p3bench.models.collate import EncodedSubset, TrainCollator, encode_examples
from p3bench.models.factory import build_causal_lm
from p3bench.models.module import SelectionLM
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.scoring import ScoringItems, build_scorer
from p3bench.scoring.base import length_buckets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="pool size (synthetic_math train)")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tiny = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model" / "tiny.yaml"))
    splits = load_synthetic_math(n_train=args.n, n_val=10, n_test=10)
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=384)
    torch.manual_seed(0)
    model = build_causal_lm({"architecture": tiny["architecture"]}, tokenizer, offline=True)
    module = SelectionLM(model, tokenizer, partial(torch.optim.AdamW, lr=1e-3))
    module.eval()
    encoded = encode_examples(splits.train, tokenizer)
    indices = list(range(len(splits.train)))
    items = ScoringItems(splits.train, encoded, indices, tokenizer, args.max_length)

    lengths = [encoded.num_tokens(i, args.max_length) for i in indices]
    collate = TrainCollator(tokenizer.pad_token_id, args.max_length)
    subset = EncodedSubset(encoded, indices)
    batches = [collate([subset[p] for p in b]) for b in length_buckets(lengths, args.batch_size)]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)

    def raw() -> None:
        with torch.inference_mode():
            for b in batches:
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])

    def timed(fn) -> float:
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        return best

    raw_s = timed(raw)
    summary = {"n": args.n, "tokens": tokens, "raw_forward_s": round(raw_s, 3)}
    for name in ("likelihood", "steps"):
        scorer = build_scorer(name, batch_size=args.batch_size, progress=False)
        scorer.score(module, items)  # warm-up (the step scorer maps tokens to lines once per pool)
        seconds = timed(lambda s=scorer: s.score(module, items))
        summary[f"{name}_s"] = round(seconds, 3)
        summary[f"{name}_ratio"] = round(raw_s / seconds, 3)
        print(
            f"{name:>10}: {tokens / seconds:,.0f} tokens/s  vs raw forward {tokens / raw_s:,.0f} tokens/s  "
            f"ratio {raw_s / seconds:.3f}"
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
