"""A multi-agent run (arXiv 2410.08102) that crashes mid-epoch and resumes from ``last.ckpt`` trains exactly as
one that never stopped: the same rounds at the same steps, the same batches, the same agent and console
weights, and bitwise the same final parameters (the rewards of the rounds after the checkpoint are measured
again with the restored model and optimiser, on the restored weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from p3bench.run import train_and_evaluate
from tests.conftest import compose_config
from tests.test_step_rounds import BATCHES, run_overrides

#: a round every 3 steps (5 rounds in the 14 steps of the smoke run), the domain agent on the problem type,
#: TF-IDF topics, a 5-step perplexity stand-in for the quality agent
METHOD = [
    "method=multi_agent",
    "method.reselect_every_n_steps=3",
    "method.progress=false",
    "method.agent_options.domain.field=type",
    "method.agent_options.topic.embedder=tfidf",
    "method.agent_options.topic.n_clusters=4",
    "+method.agent_options.topic.embedder_kwargs.dim=16",
    "+method.agent_options.quality.scorer_options.standin.steps=5",
    "method.reference.max_examples=8",
]


def without_timings(value):
    """``value`` without the wall-clock entries (``seconds``, ``reward.seconds``), which differ run to run."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not str(k).endswith("seconds")}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


@pytest.mark.slow
def test_multi_agent_resumed_mid_epoch_equals_an_uninterrupted_run(tmp_path: Path, cache_dir: Path):
    for tag in ("whole", "crashed", "resumed"):
        BATCHES.pop(tag, None)
    whole = train_and_evaluate(compose_config(run_overrides(METHOD, "whole"), tmp_path / "whole", cache_dir))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_and_evaluate(compose_config(run_overrides(METHOD, "crashed", 9), tmp_path / "cut", cache_dir))
    checkpoint = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=False)
    # saved after step 8: mid-epoch (7 batches an epoch) and mid-round (round 2 covers steps 6-8)
    assert checkpoint["global_step"] == 8
    saved = checkpoint["MultiAgent"]
    assert [r["round"] for r in saved["rounds"]] == [0, 1, 2]
    resumed = train_and_evaluate(
        compose_config([*run_overrides(METHOD, "resumed"), "ckpt_path=last"], tmp_path / "cut", cache_dir)
    )

    assert BATCHES["crashed"][:8] + BATCHES["resumed"] == BATCHES["whole"]
    rounds = [without_timings(r) for r in resumed["selection"]["rounds"]]
    assert rounds == [without_timings(r) for r in whole["selection"]["rounds"]]
    assert [(r["round"], r["global_step"]) for r in rounds] == [(r, 3 * r) for r in range(5)]
    assert all(r["diagnostics"]["updated"] for r in rounds)
    # the labels' forward tokens are counted once, in round 0, in both runs
    assert resumed["compute"]["selection_forward_tokens"] == whole["compute"]["selection_forward_tokens"]

    finals = [
        torch.load(d / "checkpoints" / "last.ckpt", weights_only=False)
        for d in (tmp_path / "whole", tmp_path / "cut")
    ]
    assert finals[0]["global_step"] == finals[1]["global_step"] == 14
    for key, value in finals[0]["state_dict"].items():
        assert torch.equal(value, finals[1]["state_dict"][key]), key
    states = [f["MultiAgent"]["method_state"] for f in finals]
    assert states[0] == states[1]
    assert set(states[0]["weights"]) == {"quality", "domain", "topic"}
    assert sum(states[0]["theta"].values()) == pytest.approx(1.0)
    # the weights moved after the checkpoint: the resumed run measured the later rewards itself
    assert states[1]["weights"] != saved["method_state"]["weights"]
