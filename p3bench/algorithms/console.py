"""The update rules of multi-agent collaborative data selection (Bai et al., arXiv 2410.08102; ACL 2025 as
"Efficient Pretraining Data Selection for Language Models via Multi-Actor Collaboration"), as pure NumPy.

Every agent ``A`` (quality, domain, topic, ...) puts each pool example in one of its categories ``j`` and
holds a weight ``w_A^j`` per category; a console mixes the agents with weights ``theta_A``. Every ``U``
optimiser steps the agents observe rewards ``R_A^j`` (the mean reward of samples drawn from category ``j``,
Eq. 4), and then:

- Eq. 5, :func:`update_agent_weights`: ``w_A^j <- (1 - eta) w_A^j + eta R_A^j`` (a sliding average);
- Eq. 7, :func:`agent_reward`: ``R_A = mean_j w_A^j R_A^j`` over the observed categories;
- Eq. 8, :func:`update_console`: ``theta_A <- theta_A + eta (R_A - mean_A R_A)``, then clipped at a floor and
  normalised to sum 1 (the paper leaves the normalisation implicit; see the function);
- Eq. 6, :func:`console_scores`: ``S(x) = sum_A theta_A w_A^{c_A(x)}``;
- and the top-k of ``S`` is the next selection (:func:`top_k`).

Rewards are "higher is better": a positive reward means the reference loss falls (the direction Eq. 2
maximises). The paper prints its influence (Eq. 3) with a minus sign, which reads as Koh and Liang's "change
in loss"; the sign here is fixed so that positive means helpful.

The public code (``Relaxed-System-Lab/multi-actor-data-selection``, ``src/data_selection/update_agent.py``)
departs from these equations; its rules are here as named functions, each documented as a departure:
:func:`public_code_agent_update`, :func:`public_code_console_signal`, :func:`public_code_console_update`,
and the repetition decay :func:`repetition_decay` (its final score divides by ``1 + 0.1 * times selected``;
not in the paper).

The paper gives no numeric ``eta`` (the public code uses 0.1) nor the update interval ``U``; both are the
caller's. Arrays in, arrays out: no models, files or configuration here. Categories that a round did not
observe (a category with no sample) are marked by ``observed=False`` and keep their weight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from p3bench.utils.hashing import id_hash_order

__all__ = [
    "agent_reward",
    "console_scores",
    "equal_theta",
    "id_hash_tie_rank",
    "public_code_agent_update",
    "public_code_console_signal",
    "public_code_console_update",
    "random_tie_rank",
    "repetition_decay",
    "top_k",
    "update_agent_weights",
    "update_console",
]

#: the public code's scale in its agent transform ``exp(0.5 * loss)``
PUBLIC_AGENT_SCALE = 0.5
#: the public code's scale and offset in its console transform ``exp(0.6 * loss) / 100 - 1``
PUBLIC_CONSOLE_SCALE = 0.6
PUBLIC_CONSOLE_DIVISOR = 100.0


def _observed_mask(observed: ArrayLike | None, n: int) -> NDArray[np.bool_]:
    if observed is None:
        return np.ones(n, dtype=bool)
    mask = np.asarray(observed, dtype=bool)
    if mask.shape != (n,):
        raise ValueError(f"observed has shape {mask.shape}: expected ({n},), one flag per category")
    return mask


def _weights_and_rewards(w: ArrayLike, R: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    weights = np.asarray(w, dtype=np.float64)
    rewards = np.asarray(R, dtype=np.float64)
    if weights.ndim != 1 or rewards.shape != weights.shape:
        raise ValueError(
            f"weights {weights.shape} and rewards {rewards.shape}: expected two 1-d arrays of one length"
        )
    return weights, rewards


def update_agent_weights(
    w: ArrayLike, R: ArrayLike, eta: float, observed: ArrayLike | None = None
) -> NDArray[np.float64]:
    """Eq. 5 of arXiv 2410.08102: ``w_j <- (1 - eta) w_j + eta R_j`` for every observed category ``j``.

    ``w`` and ``R`` hold one value per category (``R_j``, Eq. 4, is the mean reward of the samples drawn
    from category ``j``); ``observed`` (default: all) marks the categories that had samples this round.
    Unobserved categories keep their weight and their ``R`` is ignored (it may be NaN). Returns a new array.
    """
    weights, rewards = _weights_and_rewards(w, R)
    mask = _observed_mask(observed, weights.size)
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta={eta!r}: expected a number in [0, 1]")
    if not np.all(np.isfinite(rewards[mask])):
        raise ValueError("an observed category has a non-finite reward: expected finite rewards")
    out = weights.copy()
    out[mask] = (1.0 - float(eta)) * weights[mask] + float(eta) * rewards[mask]
    return out


def agent_reward(w: ArrayLike, R: ArrayLike, observed: ArrayLike | None = None) -> float:
    """Eq. 7 of arXiv 2410.08102: ``R_A = (1/n) sum_j w_j R_j`` over the ``n`` observed categories.

    Algorithm 2 updates the agents first, so the caller passes the weights after :func:`update_agent_weights`.
    An agent with no observed category has reward 0 (it then neither gains nor loses console weight
    relative to an agent at the mean).

    Taken literally, as here, Eq. 7 rewards the *size* of an agent's category rewards, not their sign: with
    weights starting at 0 the first update makes ``w_j = eta R_j``, so ``R_A = eta mean_j R_j^2 >= 0``, and
    while the weights follow the rewards ``w_j R_j`` stays mostly positive. An agent that separates its
    categories strongly thus gains console weight (Eq. 8) even when its categories are harmful (all
    ``R_j < 0``).
    """
    weights, rewards = _weights_and_rewards(w, R)
    mask = _observed_mask(observed, weights.size)
    if not mask.any():
        return 0.0
    return float(np.mean(weights[mask] * rewards[mask]))


def equal_theta(agents: Sequence[str]) -> dict[str, float]:
    """The console weights every run starts from: ``1 / len(agents)`` each (the public code's start; the
    paper's RegMix initialisation of the agents is not reproduced)."""
    if not agents:
        raise ValueError("no agents: expected at least one")
    return {str(a): 1.0 / len(agents) for a in agents}


def _normalised(theta: Mapping[str, float], floor: float) -> dict[str, float]:
    names = list(theta)
    values = np.maximum(np.asarray([theta[a] for a in names], dtype=np.float64), float(floor))
    total = float(values.sum())
    if not np.isfinite(total) or total <= 0.0:
        return equal_theta(names)
    return {a: float(v / total) for a, v in zip(names, values, strict=True)}


def update_console(
    theta: Mapping[str, float], R_A: Mapping[str, float], eta: float, floor: float = 0.0
) -> dict[str, float]:
    """Eq. 8 of arXiv 2410.08102: ``theta_A <- theta_A + eta (R_A - Rbar)`` with ``Rbar`` the mean of the
    agents' rewards (Eq. 7), then ``theta <- max(theta, floor) / sum(max(theta, floor))``.

    The paper does not say how ``theta`` stays a mixture; without a rule a weight can go negative and flip
    the sign of its agent's scores. Clipping at ``floor`` (default 0: an agent can be switched off, never
    inverted) and renormalising to sum 1 is this implementation's choice. When every clipped weight is 0
    the console falls back to equal weights. ``theta`` and ``R_A`` must name the same agents.
    """
    if set(theta) != set(R_A):
        raise ValueError(
            f"console weights for {sorted(theta)} and rewards for {sorted(R_A)}: expected the same agents"
        )
    if float(floor) < 0.0:
        raise ValueError(f"floor={floor!r}: expected a number >= 0")
    mean = float(np.mean([float(R_A[a]) for a in theta]))
    moved = {a: float(theta[a]) + float(eta) * (float(R_A[a]) - mean) for a in theta}
    return _normalised(moved, floor)


def console_scores(
    labels: Mapping[str, ArrayLike], weights: Mapping[str, ArrayLike], theta: Mapping[str, float]
) -> NDArray[np.float64]:
    """Eq. 6 of arXiv 2410.08102: ``S(x) = sum_A theta_A w_A^{c_A(x)}``, where ``c_A(x)`` is the category
    agent ``A`` gives example ``x`` (``labels[A]``, int64 per pool example) and ``w_A`` its category weights.
    Agents are those of ``theta``; each needs labels and weights."""
    missing = sorted(a for a in theta if a not in labels or a not in weights)
    if missing:
        raise ValueError(f"agents {missing} have no labels or weights: expected both for every agent")
    scores: NDArray[np.float64] | None = None
    for agent, share in theta.items():
        cats = np.asarray(labels[agent], dtype=np.int64)
        w = np.asarray(weights[agent], dtype=np.float64)
        if cats.size and (cats.min() < 0 or cats.max() >= w.size):
            raise ValueError(
                f"agent {agent!r} has labels outside [0, {w.size}): expected one weight per category"
            )
        part = float(share) * w[cats]
        if scores is None:
            scores = part
        elif part.shape != scores.shape:
            raise ValueError(f"agent {agent!r} labels {part.size} examples: expected {scores.size}")
        else:
            scores = scores + part
    if scores is None:
        raise ValueError("no agents: expected at least one console weight")
    return scores


def repetition_decay(scores: ArrayLike, times_selected: ArrayLike, lam: float) -> NDArray[np.float64]:
    """The public code's repetition decay (not in arXiv 2410.08102): an example already selected ``n``
    times has its score divided by ``1 + lam * n`` (the code: ``lam = 0.1``, ``n`` its epoch count).

    Departure, for scores below 0: the code's scores are positive (weights and console normalised to sum 1),
    where division lowers them. The paper's updates give negative weights to harmful categories, and
    dividing a negative score would *raise* it, so a negative score is multiplied by ``1 + lam * n`` instead:
    a repeat lowers every score, as the code intends. ``lam = 0`` returns the scores unchanged.
    """
    values = np.asarray(scores, dtype=np.float64)
    counts = np.asarray(times_selected, dtype=np.float64)
    if counts.shape != values.shape:
        raise ValueError(f"times_selected {counts.shape} for scores {values.shape}: expected one count each")
    if float(lam) < 0.0 or np.any(counts < 0):
        raise ValueError("repetition decay needs lam >= 0 and counts >= 0")
    factor = 1.0 + float(lam) * counts
    return np.where(values >= 0.0, values / factor, values * factor)


def top_k(scores: ArrayLike, k: int, tie_rank: ArrayLike) -> NDArray[np.int64]:
    """Pool positions of the ``k`` largest ``scores``, sorted ascending. Exact ties are broken by
    ``tie_rank`` (lower first; a permutation of the positions: :func:`random_tie_rank` for a per-round
    random order, :func:`id_hash_tie_rank` for a fixed one). NaN scores rank last. With few categories a
    console score takes few distinct values, so the cut usually falls inside a tie and ``tie_rank``
    decides which examples of that category are kept."""
    values = np.asarray(scores, dtype=np.float64)
    ranks = np.asarray(tie_rank, dtype=np.int64)
    if ranks.shape != values.shape:
        raise ValueError(f"tie_rank {ranks.shape} for scores {values.shape}: expected one rank each")
    if not 0 <= int(k) <= values.size:
        raise ValueError(f"k={k}: expected 0 <= k <= {values.size}")
    keyed = np.where(np.isnan(values), -np.inf, values)
    order = np.lexsort((ranks, np.isnan(values), -keyed))
    return np.sort(order[: int(k)]).astype(np.int64)


def random_tie_rank(n: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """A random rank for each of ``n`` positions from ``rng`` (a selection round's seeded generator)."""
    ranks = np.empty(n, dtype=np.int64)
    ranks[rng.permutation(n)] = np.arange(n)
    return ranks


def id_hash_tie_rank(ids: Sequence[str]) -> NDArray[np.int64]:
    """Each position's rank in a fixed hash order of ``ids`` (independent of seed and pool order)."""
    ranks = np.empty(len(ids), dtype=np.int64)
    ranks[np.asarray(id_hash_order(list(ids)), dtype=np.int64)] = np.arange(len(ids))
    return ranks


# -- the public code's rules (departures from the paper) --------------------------------------------------


def _losses(post_losses: Sequence[ArrayLike], n: int) -> list[NDArray[np.float64]]:
    if len(post_losses) != n:
        raise ValueError(f"post-step losses for {len(post_losses)} categories: expected {n}")
    return [np.asarray(lo, dtype=np.float64).reshape(-1) for lo in post_losses]


def public_code_agent_update(
    w: ArrayLike, post_losses: Sequence[ArrayLike], eta: float
) -> NDArray[np.float64]:
    """The public code's agent update (``update_agent.py``, ``update_weights_per_loss``), a departure from
    Eq. 5 of arXiv 2410.08102 (``update.transform=public_code``).

    For each category ``j`` and each of its samples' post-step reference losses ``l`` in turn,
    ``w_j <- (1 - eta) w_j + eta exp(0.5 l)`` (so ``m`` samples decay the old weight by ``(1 - eta)^m``);
    then ``w`` is normalised to sum 1. A category without samples keeps its weight before normalising. The
    code also computes a z-score of the losses and never uses it; neither does this.

    Sign caveat: the reward is the reference loss *after* a step on the category, so a category whose step
    raises the reference loss gets a larger weight. Read literally this inverts the paper's Eq. 2 (which
    maximises the negative reference loss); it is reproduced as the code has it, and only the paper's rule
    is expected to raise the weight of categories that help.
    """
    weights = np.asarray(w, dtype=np.float64).copy()
    for j, losses in enumerate(_losses(post_losses, weights.size)):
        for loss in losses:
            weights[j] = (1.0 - float(eta)) * weights[j] + float(eta) * np.exp(PUBLIC_AGENT_SCALE * loss)
    total = float(weights.sum())
    if not np.isfinite(total) or total == 0.0:
        raise ValueError("public-code agent weights sum to 0 or are not finite: cannot normalise")
    return weights / total


def public_code_console_signal(w: ArrayLike, post_losses: Sequence[ArrayLike]) -> float:
    """The public code's per-agent console signal (``compute_normalized_S``), a departure from Eq. 7 of
    arXiv 2410.08102 (``update.console=public_code``): ``mean_j w_j * mean_l(exp(0.6 l) / 100 - 1)`` over
    the categories with samples, ``l`` their post-step reference losses.

    The code's loop overwrites its per-loss value, so it uses only a category's last loss divided by the
    number of losses; the mean over the losses here is the evident intent. The code also keeps one signal per
    *category* (25 entries) and its console update then reads only the first 3 of them, all quality bins
    (an apparent bug, not reproduced): here each agent's signal is the mean over its categories.
    """
    weights = np.asarray(w, dtype=np.float64)
    parts = [
        weights[j] * float(np.mean(np.exp(PUBLIC_CONSOLE_SCALE * losses) / PUBLIC_CONSOLE_DIVISOR - 1.0))
        for j, losses in enumerate(_losses(post_losses, weights.size))
        if losses.size
    ]
    return float(np.mean(parts)) if parts else 0.0


def public_code_console_update(
    theta: Mapping[str, float], signals: Mapping[str, float], beta: float = 1.0
) -> dict[str, float]:
    """The public code's console update (``update_collaborative_weights``), a departure from Eq. 8 of
    arXiv 2410.08102 (``update.console=public_code``): ``d_A = s_A - mean(s)``,
    ``theta_A <- theta_A + sign(d_A) |d_A|^beta`` (``beta = 1``: Eq. 8 with ``eta = 1``), then
    ``theta <- theta / sum(theta)`` with no clipping (left unnormalised when the sum is 0, as in the code).
    """
    if set(theta) != set(signals):
        raise ValueError(
            f"console weights for {sorted(theta)} and signals for {sorted(signals)}: expected the same agents"
        )
    mean = float(np.mean([float(signals[a]) for a in theta]))
    moved = {}
    for agent in theta:
        diff = float(signals[agent]) - mean
        moved[agent] = float(theta[agent]) + float(np.sign(diff) * abs(diff) ** float(beta))
    total = sum(moved.values())
    if total == 0.0:
        return moved
    return {a: v / total for a, v in moved.items()}
