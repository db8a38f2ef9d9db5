"""DEFT-UCS (arXiv 2310.16776, DELIFT's baseline): equal cluster shares, nearest and farthest from each
centroid, exactly the budget, against a direct reference."""

from __future__ import annotations

import numpy as np
import pytest

from p3bench.data.example import DatasetSplits, Example
from p3bench.errors import ConfigError
from p3bench.methods import METHODS
from p3bench.methods.base import SelectionContext
from p3bench.methods.deft_ucs import cluster_shares, deft_ucs_select
from p3bench.models.tokenizer import train_local_tokenizer


def reference_select(similarity, labels, k, budget, alpha):
    """Per cluster: its share, then round(alpha * share) most similar and the rest least similar."""
    shares = cluster_shares(budget, np.bincount(labels, minlength=k))
    kept = set()
    for c in range(k):
        members = sorted(np.flatnonzero(labels == c).tolist(), key=lambda i: (-similarity[i], i))
        near = int(round(alpha * shares[c]))
        kept.update(members[:near])
        kept.update(members[len(members) - (shares[c] - near) :] if shares[c] - near else [])
    return sorted(kept)


@pytest.mark.parametrize("seed", range(5))
def test_selection_matches_the_reference_and_is_exactly_the_budget(seed):
    rng = np.random.default_rng(seed)
    n, k = 200, 7
    labels = rng.integers(0, k, size=n)
    labels[rng.random(n) < 0.3] = 0  # an uneven clustering: one big cluster, some small
    similarity = rng.random(n)
    for budget in (7, 30, 61, 150, 200):
        for alpha in (0.0, 0.5, 1.0):
            kept = deft_ucs_select(similarity, labels, k, budget, alpha)
            assert len(kept) == len(set(kept.tolist())) == budget
            assert kept.tolist() == reference_select(similarity, labels, k, budget, alpha)


def test_shares_are_equal_then_go_to_the_clusters_with_room():
    assert cluster_shares(30, np.array([10, 10, 10])).tolist() == [10, 10, 10]
    # the small cluster gives all it has; the rest is spread evenly over the clusters with room
    assert cluster_shares(30, np.array([2, 50, 20])).tolist() == [2, 14, 14]
    assert cluster_shares(30, np.array([2, 50, 12])).tolist() == [2, 16, 12]
    assert cluster_shares(31, np.array([10, 10, 10, 10])).tolist() == [8, 8, 8, 7]
    assert cluster_shares(100, np.array([3, 4])).tolist() == [3, 4]


def test_alpha_splits_each_share_between_the_nearest_and_the_farthest():
    labels = np.zeros(10, dtype=np.int64)
    similarity = np.arange(10, dtype=float)  # position 9 nearest the centroid, 0 farthest
    assert deft_ucs_select(similarity, labels, 1, 4, 0.5).tolist() == [0, 1, 8, 9]
    assert deft_ucs_select(similarity, labels, 1, 4, 1.0).tolist() == [6, 7, 8, 9]
    assert deft_ucs_select(similarity, labels, 1, 4, 0.0).tolist() == [0, 1, 2, 3]


def _splits(n: int = 60) -> DatasetSplits:
    topics = ["apples and pears", "rivers and lakes", "engines and gears"]
    train = [
        Example(
            id=f"e{i}", prompt=f"Tell me about {topics[i % 3]} number {i}.\n", target=f"{topics[i % 3]} {i}"
        )
        for i in range(n)
    ]
    return DatasetSplits("toy", "instruction", train, train[:3], train[3:6])


def test_the_method_selects_the_budget_from_every_cluster(tmp_path):
    splits = _splits()
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=200)
    dm = METHODS.get("deft_ucs")(
        splits=splits,
        tokenizer=tokenizer,
        budget=0.3,
        seed=0,
        max_length=64,
        cache_dir=tmp_path,
        embedder="tfidf",
        n_clusters=3,
    )
    selection = dm.select(SelectionContext(0, 0, 0, np.random.default_rng(0), None, None))
    assert len(selection.ids) == 18
    assert selection.diagnostics["kept_per_cluster"] == [6, 6, 6]
    again = dm.select(SelectionContext(0, 0, 0, np.random.default_rng(1), None, None))
    assert again.ids == selection.ids  # deterministic: no randomness beyond the clustering's seed
    with pytest.raises(ConfigError, match="method.alpha"):
        METHODS.get("deft_ucs")(splits=splits, tokenizer=tokenizer, alpha=1.5)
