"""The cost of multi-agent selection's rewards (p3bench.scoring.rewards) against plain training.

The method is Bai et al.'s multi-agent collaborative data selection (arXiv 2410.08102; ACL 2025 as "Efficient
Pretraining Data Selection for Language Models via Multi-Actor Collaboration"); its rewards are the public
code's one-step look-ahead (``lookahead``) and the paper's projected-gradient influence with ``H = I``
(``gradient``).

Setting: ``experiment=sachdeva19_run`` (text_mix, the tiny model with its 512-token tokenizer, documents cut
at 128 tokens, batch 16). Plain training is the training step of :class:`SelectionLM` (forward, per-example
NLL, backward, AdamW step) on random batches of the pool, without Lightning's loop around it. Each reward
then scores ``--units`` units of ``--unit-size`` pool examples against ``--reference`` validation documents
of the ``--reference-domain`` (``multi_agent``'s defaults: 4 examples a unit, 16 reference documents), with
the optimiser state of that training.

Tokens/s is what the compute ledger records per second (forward and backward tokens separately). To compare
with training, the FLOP rate is also given as "training-token equivalents" per second: ``(2 fwd + 4 bwd) /
6`` tokens, the count of training tokens with the same FLOPs (``p3bench.compute``), as a ratio to the
training rate. The share of training time is one update's seconds over ``--every`` training steps.

    OMP_NUM_THREADS=1 python benchmarks/multi_agent_rewards.py
    OMP_NUM_THREADS=1 python benchmarks/multi_agent_rewards.py --units 16 --every 30 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict

from p3bench.cli import CONFIG_DIR
from p3bench.compute import ComputeLedger
from p3bench.models.collate import EncodedSubset, TrainCollator
from p3bench.models.factory import build_causal_lm
from p3bench.models.losses import per_example_nll
from p3bench.models.module import SelectionLM
from p3bench.preflight import load_splits
from p3bench.run import build_datamodule
from p3bench.scoring.rewards import REWARDS, RewardUnit, reference_batches, unit_batches

REPO_ROOT = Path(__file__).resolve().parents[1]


def compose_run_config(data_dir: str, cache_dir: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                "experiment=sachdeva19_run",
                f"paths.data_dir={data_dir}",
                f"paths.cache_dir={cache_dir}",
            ],
            return_hydra_config=True,
        )
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = cache_dir
        del cfg.hydra
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str((REPO_ROOT / ".." / "shared" / "data").resolve()))
    parser.add_argument("--units", type=int, default=32, help="units per update (categories x samples)")
    parser.add_argument("--unit-size", type=int, default=4)
    parser.add_argument("--reference", type=int, default=16, help="reference documents")
    parser.add_argument("--reference-domain", default="c4")
    parser.add_argument("--train-steps", type=int, default=20, help="timed training steps a repeat")
    parser.add_argument("--every", type=int, default=30, help="training steps between updates (U)")
    parser.add_argument("--dim", type=int, default=1024, help="the gradient reward's projected dimension")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as cache_dir:
        cfg = compose_run_config(args.data_dir, cache_dir)
        splits = load_splits(cfg)
        dm = build_datamodule(cfg, splits)
    torch.manual_seed(0)
    model = build_causal_lm(cfg.model, dm.tokenizer, offline=True)
    module = SelectionLM(model, dm.tokenizer, instantiate(cfg.model.optimizer), scheduler=None, task="lm")
    optimizer = module.configure_optimizers()
    collate = TrainCollator(dm.tokenizer.pad_token_id, dm.max_length)
    generator = torch.Generator().manual_seed(0)

    def train_steps(n: int) -> tuple[int, float]:
        tokens, start = 0, time.perf_counter()
        for _ in range(n):
            indices = torch.randperm(len(dm.pool), generator=generator)[: dm.batch_size].tolist()
            batch = collate(list(EncodedSubset(dm.encoded("train"), indices)))
            optimizer.zero_grad()
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            per_example_nll(logits, batch["labels"]).mean().backward()
            optimizer.step()
            tokens += int(batch["attention_mask"].sum())
        return tokens, time.perf_counter() - start

    module.train()
    train_steps(5)  # warm-up, and AdamW moments for the look-ahead's train_state

    reference = [ex for ex in splits.validation if ex.meta.get("domain") == args.reference_domain]
    reference = reference[: args.reference]
    unit_generator = torch.Generator().manual_seed(1)
    units = [
        RewardUnit(tuple(torch.randint(len(dm.pool), (args.unit_size,), generator=unit_generator).tolist()))
        for _ in range(args.units)
    ]
    batches, reference_set = unit_batches(dm, units), reference_batches(dm, reference, args.reference)
    passes = {
        "look-ahead (train_state)": REWARDS.get("lookahead")(optimizer="train_state"),
        "look-ahead (sgd)": REWARDS.get("lookahead")(optimizer="sgd"),
        f"gradient alignment (vmap, dim {args.dim})": REWARDS.get("gradient")(
            dim=args.dim, per_example="vmap"
        ),
        f"gradient alignment (loop, dim {args.dim})": REWARDS.get("gradient")(
            dim=args.dim, per_example="loop"
        ),
    }
    for reward in passes.values():
        reward(module, optimizer, batches[:2], reference_set, progress=False)  # warm-up (the projection)

    # repeats interleaved (training, then each reward), so that a change in the machine's load hits all alike
    train_runs: list[tuple[int, float]] = []
    reward_runs: dict[str, list[tuple[int, int, float]]] = {label: [] for label in passes}
    for _ in range(args.repeats):
        train_runs.append(train_steps(args.train_steps))
        for label, reward in passes.items():
            start = time.perf_counter()
            result = reward(module, optimizer, batches, reference_set, ComputeLedger(), progress=False)
            seconds = time.perf_counter() - start
            reward_runs[label].append((result.forward_tokens, result.backward_tokens, seconds))
    step_seconds = statistics.median(s / args.train_steps for _, s in train_runs)
    train_rate = statistics.median(t / s for t, s in train_runs)

    print(
        f"text_mix pool {len(dm.pool)}, max_length {dm.max_length}, batch {dm.batch_size}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters, {args.threads} thread(s); "
        f"{args.units} units x {args.unit_size} examples, {len(reference)} reference documents "
        f"({args.reference_domain}); medians of {args.repeats} interleaved repeats"
    )
    print(
        "| pass | seconds per update | forward tokens/s | backward tokens/s | "
        f"training-token equivalents/s (ratio to training) | share of {args.every} training steps |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| plain training, one step | {step_seconds:.3f} | {train_rate:,.0f} | {train_rate:,.0f} | "
        f"{train_rate:,.0f} (1.00) | |"
    )
    for label, runs in reward_runs.items():
        forward, backward, _ = runs[-1]
        update = statistics.median(seconds for _, _, seconds in runs)
        equivalent = (2 * forward + 4 * backward) / 6 / update
        print(
            f"| {label} | {update:.2f} | {forward / update:,.0f} | {backward / update:,.0f} | "
            f"{equivalent:,.0f} ({equivalent / train_rate:.2f}) | {update / (args.every * step_seconds):.0%} |"
        )


if __name__ == "__main__":
    main()
