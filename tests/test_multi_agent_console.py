"""The update rules of multi-agent collaborative selection (arXiv 2410.08102; p3bench.algorithms.console) on
hand-computed numbers, the public code's departures, the repetition decay, the console's floor and
normalisation, and top-k with ties; plus property checks against naive loops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from p3bench.algorithms import console


# -- Eq. 5: the agent's sliding average --------------------------------------------------------------------
def test_agent_update_is_eq5_on_hand_computed_numbers():
    # w <- 0.9 w + 0.1 R: 0.9 * 1 + 0.1 * 0.5 = 0.95; 0.9 * 0 + 0.1 * -0.2 = -0.02
    np.testing.assert_allclose(console.update_agent_weights([1.0, 0.0], [0.5, -0.2], 0.1), [0.95, -0.02])


def test_agent_update_keeps_unobserved_categories_and_ignores_their_reward():
    out = console.update_agent_weights(
        [1.0, 0.3, -0.4], [0.5, math.nan, 1.0], 0.5, observed=[True, False, True]
    )
    np.testing.assert_allclose(out, [0.75, 0.3, 0.3])


def test_agent_update_does_not_modify_its_input_and_rejects_bad_values():
    w = np.array([1.0, 2.0])
    console.update_agent_weights(w, [0.0, 0.0], 0.5)
    assert w.tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="eta"):
        console.update_agent_weights(w, [0.0, 0.0], 1.5)
    with pytest.raises(ValueError, match="non-finite"):
        console.update_agent_weights(w, [math.nan, 0.0], 0.1)
    with pytest.raises(ValueError, match="one length"):
        console.update_agent_weights(w, [0.0], 0.1)


def test_repeated_updates_with_a_constant_reward_converge_to_it():
    w = np.array([0.0, 5.0])
    for _ in range(200):
        w = console.update_agent_weights(w, [1.0, -1.0], 0.1)
    np.testing.assert_allclose(w, [1.0, -1.0], atol=1e-8)


# -- Eq. 7: the agent's reward -----------------------------------------------------------------------------
def test_agent_reward_is_eq7_mean_over_observed_categories():
    # (0.95 * 0.5 + (-0.02) * (-0.2)) / 2 = (0.475 + 0.004) / 2
    assert console.agent_reward([0.95, -0.02], [0.5, -0.2]) == pytest.approx(0.2395)
    assert console.agent_reward([0.95, -0.02], [0.5, math.nan], observed=[True, False]) == pytest.approx(
        0.475
    )
    assert console.agent_reward([1.0, 2.0], [0.0, 0.0], observed=[False, False]) == 0.0


# -- Eq. 8: the console ------------------------------------------------------------------------------------
def test_console_update_is_eq8_on_hand_computed_numbers():
    theta = console.equal_theta(["quality", "domain", "topic"])
    out = console.update_console(theta, {"quality": 0.3, "domain": 0.1, "topic": 0.2}, eta=0.5)
    # mean R = 0.2; theta + 0.5 (R - 0.2) = 1/3 + 0.05, 1/3 - 0.05, 1/3 (already sums to 1)
    assert out == pytest.approx({"quality": 1 / 3 + 0.05, "domain": 1 / 3 - 0.05, "topic": 1 / 3})
    assert sum(out.values()) == pytest.approx(1.0)


def test_console_clips_at_the_floor_and_renormalises():
    theta, rewards = {"a": 0.1, "b": 0.9}, {"a": -1.0, "b": 1.0}
    # a: 0.1 - 0.5 = -0.4 -> 0; b: 0.9 + 0.5 = 1.4 -> 1.4 / 1.4
    assert console.update_console(theta, rewards, eta=0.5) == pytest.approx({"a": 0.0, "b": 1.0})
    # floor 0.05: a -> 0.05, b 1.4; / 1.45
    assert console.update_console(theta, rewards, eta=0.5, floor=0.05) == pytest.approx(
        {"a": 0.05 / 1.45, "b": 1.4 / 1.45}
    )


def test_console_falls_back_to_equal_weights_when_all_are_clipped():
    out = console.update_console({"a": -0.2, "b": -0.3}, {"a": 0.0, "b": 0.0}, eta=0.1)
    assert out == {"a": 0.5, "b": 0.5}


def test_console_rejects_mismatched_agents():
    with pytest.raises(ValueError, match="same agents"):
        console.update_console({"a": 0.5, "b": 0.5}, {"a": 0.0}, eta=0.1)


# -- Eq. 6: the console score ------------------------------------------------------------------------------
def test_console_scores_are_eq6_on_hand_computed_numbers():
    labels = {"q": [0, 1, 1], "d": [1, 0, 2]}
    weights = {"q": [0.5, -0.1], "d": [0.2, 0.4, 0.0]}
    scores = console.console_scores(labels, weights, {"q": 0.6, "d": 0.4})
    # x0: .6*.5 + .4*.4; x1: .6*-.1 + .4*.2; x2: .6*-.1 + .4*0
    np.testing.assert_allclose(scores, [0.46, 0.02, -0.06])


def test_console_scores_equal_a_naive_loop():
    rng = np.random.default_rng(0)
    n, cats = 50, {"q": 5, "d": 14, "t": 13}
    labels = {a: rng.integers(0, c, n) for a, c in cats.items()}
    weights = {a: rng.normal(size=c) for a, c in cats.items()}
    theta = {"q": 0.2, "d": 0.5, "t": 0.3}
    naive = [sum(theta[a] * weights[a][labels[a][i]] for a in cats) for i in range(n)]
    np.testing.assert_allclose(console.console_scores(labels, weights, theta), naive)


def test_console_scores_reject_labels_outside_the_weights():
    with pytest.raises(ValueError, match="outside"):
        console.console_scores({"q": [0, 2]}, {"q": [1.0, 2.0]}, {"q": 1.0})
    with pytest.raises(ValueError, match="no labels or weights"):
        console.console_scores({"q": [0]}, {}, {"q": 1.0})


# -- the repetition decay ----------------------------------------------------------------------------------
def test_repetition_decay_divides_positive_scores_and_lowers_negative_ones():
    out = console.repetition_decay([1.0, 0.5, -0.5, 2.0], [0, 1, 1, 3], lam=0.1)
    np.testing.assert_allclose(out, [1.0, 0.5 / 1.1, -0.5 * 1.1, 2.0 / 1.3])
    # every repeat lowers the score, whatever its sign
    assert out[1] < 0.5 and out[2] < -0.5
    np.testing.assert_array_equal(console.repetition_decay([1.0, -1.0], [4, 4], lam=0.0), [1.0, -1.0])
    with pytest.raises(ValueError):
        console.repetition_decay([1.0], [-1], lam=0.1)


# -- top-k and ties ----------------------------------------------------------------------------------------
def test_top_k_breaks_ties_by_the_given_rank_and_puts_nan_last():
    # positions 1, 2, 3 tie at 2.0 with ranks 3, 1, 2: the two lowest ranks (positions 2 and 3) win
    assert console.top_k([1.0, 2.0, 2.0, 2.0, 0.0], 2, [0, 3, 1, 2, 4]).tolist() == [2, 3]
    assert console.top_k([math.nan, 1.0, 0.0], 2, [0, 1, 2]).tolist() == [1, 2]
    assert console.top_k([3.0, 1.0], 0, [0, 1]).tolist() == []


def test_top_k_equals_a_naive_sort():
    rng = np.random.default_rng(1)
    for _ in range(20):
        scores = rng.integers(0, 4, 40).astype(float)  # many ties
        ranks = console.random_tie_rank(40, rng)
        k = int(rng.integers(0, 41))
        naive = sorted(sorted(range(40), key=lambda i: (-scores[i], ranks[i]))[:k])
        assert console.top_k(scores, k, ranks).tolist() == naive


def test_id_hash_ties_are_stable_under_pool_order_and_random_ties_reproducible_per_rng():
    ids = [f"doc-{i}" for i in range(30)]
    scores = np.zeros(30)
    chosen = {ids[i] for i in console.top_k(scores, 10, console.id_hash_tie_rank(ids))}
    order = np.random.default_rng(3).permutation(30)
    shuffled = [ids[i] for i in order]
    again = {shuffled[i] for i in console.top_k(scores, 10, console.id_hash_tie_rank(shuffled))}
    assert chosen == again
    a = console.random_tie_rank(30, np.random.default_rng([0, 2]))
    b = console.random_tie_rank(30, np.random.default_rng([0, 2]))
    c = console.random_tie_rank(30, np.random.default_rng([0, 3]))
    assert a.tolist() == b.tolist() and sorted(a.tolist()) == list(range(30)) and a.tolist() != c.tolist()


# -- the public code's rules (departures) ------------------------------------------------------------------
def test_public_code_agent_update_steps_once_per_sample_then_normalises():
    out = console.public_code_agent_update([10.0, 10.0], [[2.0, 1.0], []], eta=0.1)
    first = 0.9 * 10.0 + 0.1 * math.exp(0.5 * 2.0)
    second = 0.9 * first + 0.1 * math.exp(0.5 * 1.0)  # 8.50951...
    np.testing.assert_allclose(out, [second / (second + 10.0), 10.0 / (second + 10.0)])
    assert out.sum() == pytest.approx(1.0)


def test_public_code_agent_update_rewards_a_higher_post_step_loss():
    """The sign caveat: the code's reward grows with the reference loss after the step, so the category
    whose step hurts the reference more ends up with the larger weight."""
    out = console.public_code_agent_update([0.5, 0.5], [[3.0], [1.0]], eta=0.1)
    assert out[0] > out[1]


def test_public_code_console_signal_and_update():
    to = lambda v: math.log(100.0 * (v + 1.0)) / 0.6  # noqa: E731 - the loss whose transform is v
    # category 0: transforms 1 and 0 (mean 0.5) * w 0.5; category 1: 2 * 0.5; an empty category is skipped
    signal = console.public_code_console_signal([0.5, 0.5, 9.0], [[to(1.0), to(0.0)], [to(2.0)], []])
    assert signal == pytest.approx((0.25 + 1.0) / 2)
    theta = console.equal_theta(["q", "d", "t"])
    signals = {"q": 0.3, "d": 0.1, "t": 0.2}
    assert console.public_code_console_update(theta, signals) == pytest.approx(
        {"q": 1 / 3 + 0.1, "d": 1 / 3 - 0.1, "t": 1 / 3}
    )
    # beta = 2: sign(d) |d|^2
    assert console.public_code_console_update(theta, signals, beta=2.0) == pytest.approx(
        {"q": 1 / 3 + 0.01, "d": 1 / 3 - 0.01, "t": 1 / 3}
    )
    # no clipping: a weight can go negative
    moved = console.public_code_console_update({"a": 0.1, "b": 0.9}, {"a": -1.0, "b": 1.0})
    assert moved == pytest.approx({"a": -0.9, "b": 1.9})
