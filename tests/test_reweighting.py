"""Hard-sample reweighting (arXiv 2402.14270): IR-DRO softmax weights, MidRanking bands, weight statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy.optimize import minimize

from p3bench.algorithms.reweighting import (
    global_irdro_weights,
    irdro_weights,
    midranking_band_size,
    midranking_weights,
    weight_stats,
)
from p3bench.errors import ConfigError


def naive_softmax(losses: list[float], r: float) -> np.ndarray:
    """exp(l_i / r) / sum_k exp(l_k / r) in float64, with no shift (only for moderate l / r)."""
    e = np.array([math.exp(v / r) for v in losses])
    return e / e.sum()


def dro_objective(w: np.ndarray, losses: np.ndarray, r: float) -> float:
    """w . l - r * KL(w || uniform), with 0 log 0 = 0."""
    b = len(losses)
    w = np.clip(w, 0.0, None)
    pos = w > 0
    kl = float((w[pos] * np.log(b * w[pos])).sum())
    return float(w @ losses) - r * kl


# ---------------------------------------------------------------- IR-DRO


@pytest.mark.parametrize("r", [0.1, 0.5, 1.0, 3.0])
def test_irdro_matches_naive_closed_form(r: float) -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        losses = torch.rand(13, generator=gen, dtype=torch.float64) * 4
        w = irdro_weights(losses, r)
        np.testing.assert_allclose(w.numpy(), naive_softmax(losses.tolist(), r), rtol=1e-12, atol=1e-15)
        assert w.sum().item() == pytest.approx(1.0, abs=1e-12)
        assert w.dtype == torch.float64 and w.shape == losses.shape and not w.requires_grad


def test_irdro_float32_and_half_inputs() -> None:
    losses = torch.tensor([2.0, 1.0, 0.5, 3.0])
    w32 = irdro_weights(losses, 1.0)
    assert w32.dtype == torch.float32
    np.testing.assert_allclose(w32.numpy(), naive_softmax(losses.tolist(), 1.0), rtol=1e-6)
    w16 = irdro_weights(losses.to(torch.bfloat16), 1.0)
    assert w16.dtype == torch.float32
    assert w16.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_irdro_is_detached_from_the_graph() -> None:
    losses = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    w = irdro_weights(losses, 1.0)
    assert not w.requires_grad
    (w * losses).sum().backward()
    np.testing.assert_allclose(losses.grad.numpy(), w.numpy())  # d/dl of sum(stopgrad(w) * l) is w


def test_irdro_shift_invariance() -> None:
    losses = torch.tensor([0.3, 1.7, 2.2, 0.9, 1.1], dtype=torch.float64)
    for r in (0.2, 1.0, 5.0):
        base = irdro_weights(losses, r)
        for shift in (-100.0, 3.5, 1e3):
            np.testing.assert_allclose(irdro_weights(losses + shift, r).numpy(), base.numpy(), atol=1e-12)


def test_irdro_limits_in_temperature() -> None:
    losses = torch.tensor([0.3, 1.7, 2.2, 0.9, 1.1], dtype=torch.float64)
    uniform = irdro_weights(losses, 1e6)
    np.testing.assert_allclose(uniform.numpy(), np.full(5, 0.2), atol=1e-6)
    one_hot = irdro_weights(losses, 1e-4)
    np.testing.assert_allclose(one_hot.numpy(), [0, 0, 1, 0, 0], atol=1e-12)


def test_irdro_no_overflow_for_large_losses() -> None:
    losses = torch.tensor([1e4, 9.9e3, 1.2e4, 5e3], dtype=torch.float32)
    for r in (1e-3, 0.1, 1.0):
        w = irdro_weights(losses, r)
        assert torch.isfinite(w).all()
        np.testing.assert_allclose(w.numpy(), [0, 0, 1, 0], atol=1e-12)
    # moderate spread at large magnitude: compare with the shift-free reference on shifted losses
    losses = torch.tensor([1e4, 1e4 + 0.5, 1e4 - 1.0], dtype=torch.float64)
    np.testing.assert_allclose(
        irdro_weights(losses, 0.25).numpy(), naive_softmax([0.0, 0.5, -1.0], 0.25), rtol=1e-10
    )


@pytest.mark.parametrize("r", [0.3, 1.0, 2.0, 10.0])
def test_irdro_maximises_kl_regularised_objective(r: float) -> None:
    rng = np.random.default_rng(1)
    for _ in range(3):
        losses = rng.normal(1.0, 1.0, size=7)
        b = len(losses)

        def neg(w: np.ndarray, losses: np.ndarray = losses) -> float:
            return -dro_objective(w, losses, r)

        def neg_grad(w: np.ndarray, losses: np.ndarray = losses) -> np.ndarray:
            w = np.clip(w, 1e-300, None)
            return -(losses - r * (np.log(len(losses) * w) + 1.0))

        res = minimize(
            neg,
            np.full(b, 1.0 / b),
            jac=neg_grad,
            method="SLSQP",
            bounds=[(1e-12, 1.0)] * b,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
            options={"ftol": 1e-15, "maxiter": 1000},
        )
        assert res.success, res.message
        closed = irdro_weights(torch.tensor(losses), r).numpy()
        best = dro_objective(closed, losses, r)
        found = dro_objective(res.x / res.x.sum(), losses, r)
        assert best >= found - 1e-9  # the closed form is at least as good as the numerical optimum
        assert best == pytest.approx(found, abs=1e-6)
        np.testing.assert_allclose(res.x, closed, atol=1e-4)


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, float("nan"), float("inf"), "1.0", None, True])
def test_irdro_bad_temperature_is_a_one_line_config_error(bad: object) -> None:
    with pytest.raises(ConfigError) as err:
        irdro_weights(torch.tensor([1.0, 2.0]), bad)  # type: ignore[arg-type]
    msg = str(err.value)
    assert "\n" not in msg and "temperature" in msg and "> 0" in msg


@pytest.mark.parametrize(
    "losses",
    [
        torch.ones(2, 3),
        torch.tensor(1.0),
        torch.tensor([]),
        torch.tensor([1.0, float("nan")]),
        torch.tensor([1.0, float("inf")]),
    ],
)
def test_irdro_bad_losses_raise_one_line_value_error(losses: torch.Tensor) -> None:
    with pytest.raises(ValueError) as err:
        irdro_weights(losses, 1.0)
    assert "\n" not in str(err.value) and "losses" in str(err.value)


# ---------------------------------------------------------------- MidRanking


def naive_band_mean(losses: list[float], fraction: float, position: int) -> float:
    ranked = sorted(losses, reverse=True)
    c = max(1, int(fraction * len(losses)))
    band = ranked[position * c : (position + 1) * c]
    assert len(band) == c
    return sum(band) / c


def test_midranking_equals_mean_of_band() -> None:
    gen = torch.Generator().manual_seed(2)
    for batch in (1, 3, 8, 17, 64):
        losses = torch.rand(batch, generator=gen, dtype=torch.float64) * 5
        for fraction in (0.05, 0.125, 0.25, 1 / 3, 0.5, 1.0):
            c = max(1, int(fraction * batch))
            assert midranking_band_size(batch, fraction) == c
            for position in range(batch // c):
                coeff = midranking_weights(losses, fraction, position)
                expected = naive_band_mean(losses.tolist(), fraction, position)
                assert (coeff * losses).sum().item() == pytest.approx(expected, rel=1e-12)
                assert int((coeff != 0).sum()) == c
                assert coeff.sum().item() == pytest.approx(1.0)
                assert set(coeff[coeff != 0].tolist()) == {1.0 / c}
                assert not coeff.requires_grad


def test_midranking_selects_the_right_examples() -> None:
    losses = torch.tensor([0.1, 5.0, 3.0, 4.0, 2.0, 1.0, 0.5, 6.0])
    # B = 8, fraction = 1/8 -> c = 1; position p picks the (p+1)-th highest loss
    for position, index in enumerate([7, 1, 3, 2, 4, 5, 6, 0]):
        coeff = midranking_weights(losses, 0.125, position)
        assert coeff.nonzero().flatten().tolist() == [index]
    # fraction = 1/4 -> c = 2; position 1 is ranks 2..3: losses 4.0 and 3.0
    assert midranking_weights(losses, 0.25, 1).nonzero().flatten().tolist() == [2, 3]


def test_midranking_full_band_is_erm() -> None:
    losses = torch.tensor([0.3, 2.0, 1.0, 4.0, 0.0])
    coeff = midranking_weights(losses, 1.0, 0)
    np.testing.assert_allclose(coeff.numpy(), np.full(5, 0.2))
    assert (coeff * losses).sum().item() == pytest.approx(losses.mean().item())


def test_midranking_small_batch_band_is_at_least_one() -> None:
    # int(0.125 * 4) = 0 in the public code; here the band has one example (the highest loss)
    coeff = midranking_weights(torch.tensor([1.0, 3.0, 2.0, 0.0]), 0.125, 0)
    assert coeff.tolist() == [0.0, 1.0, 0.0, 0.0]


def test_midranking_ties_are_broken_by_index() -> None:
    losses = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.0, 2.0])
    # descending with a stable sort: ranks 0..3 are indices 1, 2, 3, 5
    assert midranking_weights(losses, 1 / 6, 0).nonzero().flatten().tolist() == [1]
    assert midranking_weights(losses, 1 / 6, 1).nonzero().flatten().tolist() == [2]
    assert midranking_weights(losses, 1 / 6, 3).nonzero().flatten().tolist() == [5]
    assert midranking_weights(losses, 1 / 3, 1).nonzero().flatten().tolist() == [3, 5]
    same = torch.full((6,), 0.7)
    for position in range(3):
        coeff = midranking_weights(same, 1 / 3, position)
        assert coeff.nonzero().flatten().tolist() == [2 * position, 2 * position + 1]


@pytest.mark.parametrize(
    ("fraction", "position", "needle"),
    [
        (0.0, 0, "fraction"),
        (-0.1, 0, "fraction"),
        (1.5, 0, "fraction"),
        (float("nan"), 0, "fraction"),
        ("0.5", 0, "fraction"),
        (True, 0, "fraction"),
        (0.25, -1, "position"),
        (0.25, 1.0, "position"),
        (0.25, True, "position"),
        (0.25, 4, "position"),  # B = 8, c = 2: positions 0..3 fit
        (1.0, 1, "position"),
    ],
)
def test_midranking_bad_arguments_are_one_line_config_errors(
    fraction: object, position: object, needle: str
) -> None:
    with pytest.raises(ConfigError) as err:
        midranking_weights(torch.arange(8, dtype=torch.float32), fraction, position)  # type: ignore[arg-type]
    msg = str(err.value)
    assert "\n" not in msg and needle in msg and "expected" in msg


def test_midranking_bad_losses_raise_value_error() -> None:
    with pytest.raises(ValueError, match="1-D"):
        midranking_weights(torch.ones(2, 2), 0.5, 0)
    with pytest.raises(ValueError, match="non-finite"):
        midranking_weights(torch.tensor([1.0, float("nan")]), 0.5, 0)


# ---------------------------------------------------------------- weight_stats


@pytest.mark.parametrize("b", [1, 2, 7, 100])
def test_weight_stats_uniform(b: int) -> None:
    stats = weight_stats(torch.full((b,), 3.0))  # normalised first
    assert stats["entropy"] == pytest.approx(math.log(b), abs=1e-12)
    assert stats["effective_sample_size"] == pytest.approx(b)
    assert stats["ess_fraction"] == pytest.approx(1.0)
    assert stats["max_weight"] == pytest.approx(1.0 / b)


def test_weight_stats_one_hot_and_general() -> None:
    stats = weight_stats(torch.tensor([0.0, 0.0, 2.0, 0.0]))
    assert stats == {"entropy": 0.0, "max_weight": 1.0, "effective_sample_size": 1.0, "ess_fraction": 0.25}
    w = np.array([0.5, 0.25, 0.25])
    stats = weight_stats(torch.tensor(w))
    assert stats["entropy"] == pytest.approx(-(w * np.log(w)).sum())
    assert stats["effective_sample_size"] == pytest.approx(1 / (w**2).sum())
    assert set(stats) == {"entropy", "max_weight", "effective_sample_size", "ess_fraction"}
    assert all(isinstance(v, float) for v in stats.values())


def test_weight_stats_of_irdro_weights_track_temperature() -> None:
    losses = torch.linspace(0, 3, 16)
    ess = [weight_stats(irdro_weights(losses, r))["effective_sample_size"] for r in (0.1, 0.5, 1.0, 5.0)]
    assert ess == sorted(ess) and 1.0 <= ess[0] < ess[-1] <= 16.0


@pytest.mark.parametrize(
    "bad", [torch.tensor([1.0, -0.5]), torch.zeros(3), torch.tensor([]), torch.ones(2, 2)]
)
def test_weight_stats_bad_weights(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError) as err:
        weight_stats(bad)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- global (all-gathered) IR-DRO


def test_global_irdro_without_distributed_is_local() -> None:
    assert not dist.is_initialized()
    losses = torch.tensor([0.5, 1.5, 2.5])
    assert torch.equal(global_irdro_weights(losses, 0.7), irdro_weights(losses, 0.7))
    with pytest.raises(ConfigError):
        global_irdro_weights(losses, -1.0)


_LOCAL_LOSSES = [
    [0.4, 2.0, 1.1],
    [3.0, 0.2, 1.7, 2.9, 0.0],
]


def _global_worker(rank: int, world: int, init_file: str, r: float, out: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        local = torch.tensor(_LOCAL_LOSSES[rank], dtype=torch.float64, requires_grad=True)
        w = global_irdro_weights(local, r)
        out[rank] = w.tolist()
        empty = torch.tensor([], dtype=torch.float64) if rank == 0 else local.detach()
        out[("empty", rank)] = global_irdro_weights(empty, r).tolist()
    finally:
        dist.destroy_process_group()


def test_global_irdro_two_processes_unequal_batches(tmp_path) -> None:
    r = 0.8
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_global_worker, args=(2, str(tmp_path / "rendezvous"), r, out), nprocs=2, join=True)
    results = dict(out)
    manager.shutdown()
    every = [v for chunk in _LOCAL_LOSSES for v in chunk]
    expected = naive_softmax(every, r)
    np.testing.assert_allclose(results[0], expected[:3], rtol=1e-12)
    np.testing.assert_allclose(results[1], expected[3:], rtol=1e-12)
    assert sum(results[0]) + sum(results[1]) == pytest.approx(1.0)
    # rank 0 contributes no losses: rank 1 alone holds the whole softmax
    assert results[("empty", 0)] == []
    np.testing.assert_allclose(results[("empty", 1)], naive_softmax(_LOCAL_LOSSES[1], r), rtol=1e-12)
