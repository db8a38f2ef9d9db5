"""Rewards under two processes (gloo, CPU): units dealt round-robin, each computed whole on one process and
the scalars gathered, give bitwise the values of one process; every process returns them all and records
the same token totals (the reference pass the rewards start from runs on each process). Through the CLI, a
two-process run's first selection equals a one-process run's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from p3bench.compute import ComputeLedger
from p3bench.methods import METHODS
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.scoring.rewards import REWARDS, batch_tokens, reference_batches, unit_batches

from .conftest import round_zero_on_one_and_two_processes
from .test_multi_agent_rewards import tiny_module, toy_splits, train_a_little, units_of

REWARDS_COMPARED = {
    "lookahead_train_state": ("lookahead", {"optimizer": "train_state"}),
    "lookahead_sgd": ("lookahead", {"optimizer": "sgd", "lr": 0.05}),
    "gradient": ("gradient", {"dim": 64, "per_example": "vmap"}),
}


def all_rewards(saved: dict) -> dict[str, dict]:
    """Every reward of :data:`REWARDS_COMPARED` on the saved model, optimiser state, units and reference."""
    model = saved["model"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, betas=(0.9, 0.98))
    optimizer.load_state_dict(saved["optimizer"])
    out = {}
    for name, (kind, options) in REWARDS_COMPARED.items():
        ledger = ComputeLedger()
        result = REWARDS.get(kind)(**options)(
            model, optimizer, saved["units"], saved["reference"], ledger, progress=False
        )
        out[name] = {
            "values": result.values,
            "after": result.reference_loss_after,
            "before": result.reference_loss,
            "tokens": (result.forward_tokens, result.backward_tokens),
            "ledger": sorted((c.role, c.tokens) for c in ledger.components),
        }
    return out


def _worker(rank: int, world: int, rendezvous: str, saved_path: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        saved = torch.load(saved_path, weights_only=False)
        torch.save(all_rewards(saved), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_rewards_on_two_processes_equal_one_process_bitwise(tmp_path: Path):
    splits = toy_splits()
    tokenizer = train_local_tokenizer([ex.target for ex in splits.train + splits.validation], vocab_size=300)
    dm = METHODS.get("random")(splits=splits, tokenizer=tokenizer, seed=0, batch_size=8, max_length=64)
    module = tiny_module(tokenizer)
    optimizer = train_a_little(module, dm, steps=10)
    # seven units: an uneven deal (four on rank 0, three on rank 1)
    units = unit_batches(dm, units_of(dm, "a", 4, 3) + units_of(dm, "r", 3, 3))
    reference = reference_batches(dm, splits.validation, 4)
    saved_path = str(tmp_path / "saved.pt")
    torch.save(
        {"model": module.model, "optimizer": optimizer.state_dict(), "units": units, "reference": reference},
        saved_path,
    )

    one = all_rewards(torch.load(saved_path, weights_only=False))
    out = str(tmp_path / "rewards")
    mp.spawn(_worker, args=(2, str(tmp_path / "rendezvous"), saved_path, out), nprocs=2, join=True)
    two = [torch.load(f"{out}.{rank}", weights_only=False) for rank in range(2)]

    ref_tokens = batch_tokens(reference)
    for name, (kind, _) in REWARDS_COMPARED.items():
        for rank in range(2):
            got, expected = two[rank][name], one[name]
            assert got["values"].dtype == np.float64 and got["values"].shape == (7,)
            assert np.array_equal(got["values"], expected["values"]), (name, rank)
            assert got["before"] == expected["before"]
            if kind == "lookahead":
                assert np.array_equal(got["after"], expected["after"]), (name, rank)
            # the same totals on both processes: one more reference pass than one process runs
            forward, backward = expected["tokens"]
            extra_backward = ref_tokens if kind == "gradient" else 0
            assert got["tokens"] == (forward + ref_tokens, backward + extra_backward)
            assert got["ledger"] == two[0][name]["ledger"]
        assert len(set(one[name]["values"].tolist())) == 7  # seven distinct rewards: nothing trivially equal


def rewarded(first: dict) -> dict:
    """Round 0's ids, its agents' rewards and its diagnostics."""
    rewards = {k: v for k, v in first["diagnostics"].items() if k.startswith("agents.") and ".reward." in k}
    return {"ids_sha256": first["ids_sha256"], "rewards": rewards, "diagnostics": first["diagnostics"]}


@pytest.mark.slow
def test_a_two_process_run_selects_round_zero_as_one_process_does(tmp_path: Path, cache_dir: Path):
    """``multi_agent_domain`` through the CLI on one process and on two (gloo): the same round-0 unit rewards
    and the same selection."""
    args = [
        "method=multi_agent_domain",
        "method.agent_options.domain.field=type",
        "method.reference.field=type",
        "method.reselect_every_n_steps=2",
        "dataset.params.n_train=160",
    ]
    one, two = (rewarded(r) for r in round_zero_on_one_and_two_processes(args, tmp_path, cache_dir))
    assert len(one["rewards"]) == 5  # synthetic_math's five problem types, one unit each
    assert two["rewards"] == one["rewards"]
    assert two["ids_sha256"] == one["ids_sha256"]
    assert two["diagnostics"]["reward.backward_tokens"] == one["diagnostics"]["reward.backward_tokens"]
    # each process runs the reference pass the rewards start from
    assert two["diagnostics"]["reward.forward_tokens"] > one["diagnostics"]["reward.forward_tokens"]
