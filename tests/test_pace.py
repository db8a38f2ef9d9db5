"""Self-paced learning: the closed-form weights minimise their regularised objectives, and the pace schedule
admits a monotonically growing, exactly sized easy-first set."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from p3bench.algorithms.pace import SelfPacedSchedule, spl_objective, spl_weights

GRID = np.linspace(0.0, 1.0, 20001)


def _independent_objective(v: np.ndarray, loss: float, lam: float, kind: str) -> np.ndarray:
    """The per-example objectives written out from the papers, independently of the module."""
    if kind == "hard":  # Kumar et al. 2010: f(v) = -lam * v
        return v * loss - lam * v
    if kind == "linear":  # Jiang et al. 2014: f(v) = lam * (v^2 / 2 - v)
        return v * loss + 0.5 * lam * (v**2 - 2 * v)
    zeta = 1 - lam  # Jiang et al. 2014 logarithmic: f(v) = zeta * v - zeta^v / log(zeta)
    return v * loss + zeta * v - np.power(zeta, v) / np.log(zeta)


@pytest.mark.parametrize("kind", ["hard", "linear", "log"])
@pytest.mark.parametrize("lam", [0.05, 0.3, 0.7, 0.95])
def test_closed_forms_minimise_the_objective(kind: str, lam: float) -> None:
    losses = np.concatenate([[0.0, lam * 0.5, lam * 0.999, lam, lam * 1.001, 2.0], np.linspace(0, 1.5, 61)])
    weights = spl_weights(losses, lam, kind)
    assert weights.shape == losses.shape
    assert np.all((weights >= 0) & (weights <= 1))
    for loss, v in zip(losses, weights, strict=True):
        grid_values = _independent_objective(GRID, loss, lam, kind)
        at_closed_form = _independent_objective(np.array(v), loss, lam, kind)
        # the closed form is at least as good as every point of a fine grid on [0, 1] ...
        assert at_closed_form <= grid_values.min() + 1e-9, (kind, lam, loss, v)
        # ... and the module's objective is the papers' objective
        assert np.allclose(spl_objective(GRID, loss, lam, kind), grid_values)
        if kind != "hard":  # strictly convex: the minimiser is unique and matches a 1-D solver
            found = minimize_scalar(
                lambda x, loss=loss: float(_independent_objective(np.array(x), loss, lam, kind)),
                bounds=(0.0, 1.0),
                method="bounded",
                options={"xatol": 1e-10},
            )
            assert v == pytest.approx(found.x, abs=1e-5), (kind, lam, loss)


def test_closed_form_values() -> None:
    losses = np.array([-1.0, 0.0, 0.1, 0.25, 0.4, 0.5, 3.0, np.inf])
    assert spl_weights(losses, 0.4, "hard").tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert np.allclose(spl_weights(losses, 0.4, "linear"), [1, 1, 0.75, 0.375, 0, 0, 0, 0])
    zeta = 0.6
    expected = [
        1,
        1,
        math.log(0.1 + zeta) / math.log(zeta),
        math.log(0.25 + zeta) / math.log(zeta),
        0,
        0,
        0,
        0,
    ]
    assert np.allclose(spl_weights(losses, 0.4, "log"), expected)
    # soft weights decrease with difficulty
    grid = np.linspace(0, 1, 101)
    for kind in ("linear", "log"):
        assert np.all(np.diff(spl_weights(grid, 0.6, kind)) <= 0)
    # any shape, float64 out
    out = spl_weights(np.ones((2, 3), dtype=np.float32) * 0.1, 0.5, "linear")
    assert out.shape == (2, 3) and out.dtype == np.float64


@pytest.mark.parametrize(
    ("lam", "kind", "match"),
    [
        (0.5, "mixture", "unknown self-paced regulariser kind 'mixture'"),
        (0.0, "linear", "lam must be > 0"),
        (-1.0, "linear", "lam must be > 0"),
        (1.0, "log", r"lam must be in \(0, 1\)"),
        (0.0, "log", r"lam must be in \(0, 1\)"),
        (float("nan"), "hard", "lam must be finite"),
        (float("inf"), "linear", "lam must be finite"),
    ],
)
def test_spl_weights_errors(lam: float, kind: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        spl_weights(np.array([0.1, 0.2]), lam, kind)
    assert "\n" not in str(info.value)


def test_nan_difficulty_is_rejected() -> None:
    with pytest.raises(ValueError, match="1 NaN"):
        spl_weights(np.array([0.1, np.nan]), 0.5, "hard")
    with pytest.raises(ValueError, match="1-D"):
        SelfPacedSchedule().admitted(np.zeros((2, 2)), 0)


def _schedules() -> list[SelfPacedSchedule]:
    return [
        SelfPacedSchedule(),
        SelfPacedSchedule(start=0.05, step=0.15),
        SelfPacedSchedule(start=0.33, step=0.1, min_admitted=40),
        SelfPacedSchedule(mode="lambda", lambda0=0.05, growth=1.5),
        SelfPacedSchedule(mode="lambda", lambda0=0.3, growth=2.0, min_admitted=25),
    ]


@pytest.mark.parametrize("schedule", _schedules(), ids=lambda s: f"{s.mode}-{s.min_admitted}")
def test_admitted_set_grows_monotonically_and_reaches_everything(schedule: SelfPacedSchedule) -> None:
    for seed in range(30):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(1, 300))
        difficulty = rng.exponential(scale=float(rng.uniform(0.1, 3.0)), size=n)
        if seed % 3 == 0:  # heavy ties
            difficulty = np.round(difficulty, 1)
        previous = np.zeros(n, dtype=bool)
        for r in range(40):
            mask = schedule.admitted(difficulty, r)
            assert mask.dtype == bool and mask.shape == (n,)
            assert np.all(mask >= previous), (seed, r)  # nested: nothing admitted is dropped later
            assert mask.sum() >= min(schedule.min_admitted, n)
            # easy first: every admitted example is no harder than every rejected one
            if mask.any() and (~mask).any():
                assert difficulty[mask].max() <= difficulty[~mask].min()
                t = schedule.threshold(difficulty, r)
                assert difficulty[mask].max() <= t <= difficulty[~mask].min()
            previous = mask
        assert previous.all(), seed


@pytest.mark.parametrize("n", [1, 3, 7, 10, 99, 1000])
def test_quantile_mode_exact_counts_with_ties(n: int) -> None:
    schedule = SelfPacedSchedule(start=0.2, step=0.2)
    rng = np.random.default_rng(n)
    difficulty = rng.integers(0, 3, size=n).astype(float)  # three values only: ties everywhere
    for r in range(7):
        fraction = min(1.0, 0.2 + 0.2 * r)
        assert schedule.fraction(r) == pytest.approx(fraction)
        expected = min(n, math.ceil(round(fraction * n, 9)))
        mask = schedule.admitted(difficulty, r)
        assert mask.sum() == expected
        # ties at the threshold are cut by index: the lowest-index tied examples are admitted
        t = schedule.threshold(difficulty, r)
        assert np.all(mask[difficulty < t])
        assert not np.any(mask[difficulty > t])
        tied = np.flatnonzero(difficulty == t)
        tied_in = mask[tied]
        assert np.all(tied_in[: tied_in.sum()])  # a prefix of the tied indices
        # deterministic
        assert np.array_equal(mask, schedule.admitted(difficulty.copy(), r))


def test_quantile_mode_matches_p3_pace() -> None:
    schedule = SelfPacedSchedule()  # P3: start = step = 0.2; epoch e (1-based) is round e - 1
    difficulty = np.arange(10, dtype=float)[::-1].copy()  # example 9 is the easiest
    assert [schedule.fraction(e - 1) for e in range(1, 8)] == [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0]
    assert [int(schedule.admitted(difficulty, r).sum()) for r in range(6)] == [2, 4, 6, 8, 10, 10]
    assert np.flatnonzero(schedule.admitted(difficulty, 0)).tolist() == [8, 9]
    assert schedule.threshold(difficulty, 0) == 1.0
    all_ties = np.zeros(10)
    assert np.flatnonzero(schedule.admitted(all_ties, 1)).tolist() == [0, 1, 2, 3]


def test_lambda_mode_admits_exactly_below_lambda() -> None:
    schedule = SelfPacedSchedule(mode="lambda", lambda0=0.1, growth=2.0)
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0, 2, size=500)
    difficulty[:5] = [0.1, 0.2, 0.4, 0.8, 1.6]  # exactly at lambda_0 .. lambda_4: not admitted there
    for r in range(8):
        lam = 0.1 * 2.0**r
        assert schedule.lambda_at(r) == pytest.approx(lam)
        assert schedule.threshold(difficulty, r) == schedule.lambda_at(r)
        assert schedule.lam(difficulty, r) == schedule.lambda_at(r)
        assert np.array_equal(schedule.admitted(difficulty, r), difficulty < schedule.lambda_at(r))
    assert not schedule.admitted(difficulty, 0)[0] and schedule.admitted(difficulty, 1)[0]
    with pytest.raises(ValueError, match="quantile mode only"):
        schedule.fraction(0)


def test_min_admitted_fills_with_the_easiest() -> None:
    difficulty = np.array([5.0, 1.0, 3.0, 3.0, 9.0, 0.5])
    schedule = SelfPacedSchedule(mode="lambda", lambda0=0.1, growth=10.0, min_admitted=3)
    mask = schedule.admitted(difficulty, 0)  # lambda_0 = 0.1 admits nothing; the floor admits 3
    assert np.flatnonzero(mask).tolist() == [1, 2, 5]  # 0.5, 1.0 and the first of the tied 3.0s
    assert schedule.threshold(difficulty, 0) == 3.0
    assert np.flatnonzero(schedule.admitted(difficulty, 1)).tolist() == [1, 2, 5]  # lambda_1 = 1: floor binds
    assert np.array_equal(schedule.admitted(difficulty, 2), difficulty < 10.0)  # lambda_2 = 10 admits all
    big = SelfPacedSchedule(min_admitted=100)  # capped at the pool size
    assert big.admitted(difficulty, 0).all()


@pytest.mark.parametrize("kind", ["hard", "linear", "log"])
def test_soft_weights_agree_with_admitted_and_closed_forms(kind: str) -> None:
    rng = np.random.default_rng(1)
    difficulty = np.round(rng.uniform(0, 0.95, size=200), 2)  # in [0, 1) for the log regulariser; ties
    for schedule in (SelfPacedSchedule(), SelfPacedSchedule(mode="lambda", lambda0=0.1, growth=1.6)):
        for r in range(6):
            mask = schedule.admitted(difficulty, r)
            lam = schedule.lam(difficulty, r)
            if lam >= 1 and kind == "log":  # the logarithmic regulariser is defined for lambda < 1 only
                with pytest.raises(ValueError, match=r"lam must be in \(0, 1\)"):
                    schedule.soft_weights(difficulty, r, kind)
                break
            weights = schedule.soft_weights(difficulty, r, kind)
            assert weights.dtype == np.float64
            assert np.all((weights >= 0) & (weights <= 1))
            assert not np.any(weights[~mask])  # nothing outside the admitted set
            if kind == "hard":
                assert np.array_equal(weights, mask.astype(float))
                continue
            assert np.all(weights[mask] > 0)  # the whole admitted set gets weight
            assert np.allclose(weights[mask], spl_weights(difficulty[mask], lam, kind))
            for loss, v in zip(difficulty[mask][:20], weights[mask][:20], strict=True):  # and minimise
                assert spl_objective(v, loss, lam, kind) <= spl_objective(GRID, loss, lam, kind).min() + 1e-9


def test_soft_weights_in_quantile_mode_use_the_quantile_value() -> None:
    difficulty = np.array([0.4, 0.1, 0.2, 0.3, 0.8, 0.6, 0.7, 0.5, 0.9, 0.05])
    schedule = SelfPacedSchedule()
    assert schedule.threshold(difficulty, 1) == 0.3  # 4 of 10 admitted: 0.05, 0.1, 0.2, 0.3
    assert schedule.lam(difficulty, 1) == pytest.approx(0.3)
    assert schedule.lam(difficulty, 1) > 0.3
    expected = np.where(difficulty <= 0.3, np.clip(1 - difficulty / 0.3, 0, 1), 0)
    assert np.allclose(schedule.soft_weights(difficulty, 1, "linear"), expected)
    with pytest.raises(ValueError, match=r"lam must be in \(0, 1\)"):  # log needs difficulties below 1
        schedule.soft_weights(difficulty * 10, 1, "log")
    with pytest.raises(ValueError, match="unknown self-paced regulariser kind 'soft'"):
        schedule.soft_weights(difficulty, 1, "soft")


def test_state_round_trip() -> None:
    for schedule in _schedules():
        state = schedule.state_dict()
        assert json.loads(json.dumps(state)) == state  # plain types only
        restored = SelfPacedSchedule.from_state(json.loads(json.dumps(state)))
        assert restored == schedule
        difficulty = np.random.default_rng(0).uniform(size=50)
        assert np.array_equal(restored.admitted(difficulty, 2), schedule.admitted(difficulty, 2))
    with pytest.raises(ValueError, match="unknown SelfPacedSchedule state key"):
        SelfPacedSchedule.from_state({"mode": "quantile", "speed": 2})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "linear"}, "unknown pace mode 'linear'"),
        ({"start": 0.0}, r"start must be a fraction in \(0, 1\]"),
        ({"start": 1.5}, r"start must be a fraction in \(0, 1\]"),
        ({"step": -0.1}, r"step must be a fraction in \[0, 1\]"),
        ({"min_admitted": -1}, "min_admitted must be an integer >= 0"),
        ({"min_admitted": 2.5}, "min_admitted must be an integer >= 0"),
        ({"mode": "lambda", "growth": 2.0}, "lambda0 must be a finite number > 0"),
        ({"mode": "lambda", "lambda0": -1.0, "growth": 2.0}, "lambda0 must be a finite number > 0"),
        ({"mode": "lambda", "lambda0": 1.0}, "growth must be a finite number > 1"),
        ({"mode": "lambda", "lambda0": 1.0, "growth": 1.0}, "growth must be a finite number > 1"),
    ],
)
def test_schedule_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        SelfPacedSchedule(**kwargs)
    assert "\n" not in str(info.value)


def test_round_validation_and_edges() -> None:
    schedule = SelfPacedSchedule()
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="round must be an integer >= 0"):
            schedule.admitted(np.zeros(3), bad)
    assert schedule.admitted(np.zeros(0), 0).shape == (0,)
    assert schedule.soft_weights(np.zeros(0), 0, "linear").shape == (0,)
    huge = SelfPacedSchedule(mode="lambda", lambda0=1.0, growth=10.0)
    assert huge.lambda_at(10_000) == math.inf and huge.admitted(np.array([1e300, 0.0]), 10_000).all()
    # infinite difficulties (e.g. -log(0)) are the hardest and come last
    difficulty = np.array([np.inf, 0.5, 0.1])
    assert np.flatnonzero(schedule.admitted(difficulty, 0)).tolist() == [2]
    assert schedule.admitted(difficulty, 4).all()
