"""Submodular maximisation (``p3bench.algorithms.submodular``): the objectives against hand computations
and brute force, the optimisers against a greedy that evaluates ``f(A + j) - f(A)`` from the formulas, lazy
against naive greedy, and submodlib as an outside reference."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest
import scipy.sparse as sp

from p3bench.algorithms import submodular_gains
from p3bench.algorithms.submodular import (
    SubmodularResult,
    evaluate,
    facility_location_value,
    flcg_value,
    flmi_value,
    maximize,
)

# Every objective with the auxiliary kernel it needs, built for a kernel of shape (rows, candidates).
OBJECTIVES: list[tuple[str, dict[str, object]]] = [
    ("fl", {}),
    ("flmi", {"mi_form": "min"}),
    ("flmi", {"mi_form": "additive"}),
    ("flcg", {}),
]


def auxiliary(
    objective: str,
    options: dict[str, object],
    rng: np.random.Generator,
    shape: tuple[int, int],
    grid: bool = False,
) -> dict[str, object]:
    """The objective's query or private kernel (values in [0, 1], on a 1/8 grid when ``grid``)."""
    rows, cols = shape

    def draw(size: tuple[int, int]) -> np.ndarray:
        values = rng.random(size)
        return (np.round(values * 8) / 8 if grid else values).astype(np.float32)

    if objective == "flmi":
        width = rows if options["mi_form"] == "min" else cols
        return {**options, "query_kernel": draw((3, width))}
    if objective == "flcg":
        return {**options, "private_kernel": np.float32(0.75) * draw((rows, 2))}
    return dict(options)


def random_kernel(rng: np.random.Generator, rows: int, cols: int, grid: bool = False) -> np.ndarray:
    values = rng.random((rows, cols))
    return (np.round(values * 8) / 8 if grid else values).astype(np.float32)


def brute_greedy(value: Callable[[list[int]], float], n: int, budget: int) -> list[int]:
    """Greedy from the objective's formula: at each step the candidate with the largest ``f(A + j) -
    f(A)``, the lowest index on ties."""
    picks: list[int] = []
    for _ in range(budget):
        base = value(picks)
        gains = [value([*picks, j]) - base if j not in picks else -math.inf for j in range(n)]
        picks.append(int(np.argmax(gains)))
    return picks


# ----------------------------------------------------------------------------------------------------------
# Hand computations (rows: items to cover, columns: candidates)

K = np.array([[1.0, 0.2, 0.0], [0.5, 0.8, 0.1], [0.0, 0.3, 0.9]], dtype=np.float32)
QUERY = np.array([[0.6, 0.1, 0.0], [0.2, 0.4, 0.3]], dtype=np.float32)  # best per item: 0.6, 0.4, 0.3
PRIVATE = np.array([[0.9, 0.0], [0.2, 0.6], [0.0, 0.1]], dtype=np.float32)  # best per row: 0.9, 0.6, 0.1


def test_facility_location_by_hand() -> None:
    assert facility_location_value(K, []) == 0.0
    assert facility_location_value(K, [0]) == pytest.approx(1.0 + 0.5 + 0.0)
    assert facility_location_value(K, [1]) == pytest.approx(0.2 + 0.8 + 0.3)
    assert facility_location_value(K, [0, 2]) == pytest.approx(1.0 + 0.5 + 0.9)
    result = maximize("fl", K, 2, optimizer="naive")
    assert result.indices.tolist() == [0, 2]
    np.testing.assert_allclose(result.gains, [1.5, 0.9], rtol=1e-6)
    assert result.value == pytest.approx(2.4)


def test_flmi_by_hand() -> None:
    # min form: sum_i min(max_{j in A} K[i, j], max_q QUERY[q, i]), caps 0.6, 0.4, 0.3
    assert flmi_value(K, QUERY, [0]) == pytest.approx(0.6 + 0.4 + 0.0)
    assert flmi_value(K, QUERY, [1]) == pytest.approx(0.2 + 0.4 + 0.3)
    assert flmi_value(K, QUERY, [2]) == pytest.approx(0.0 + 0.1 + 0.3)
    assert flmi_value(K, QUERY, [0, 2]) == pytest.approx(0.6 + 0.4 + 0.3)
    assert flmi_value(K, QUERY, [0], eta=0.5) == pytest.approx(0.3 + 0.2 + 0.0)
    # additive form: FL + eta * sum_{j in A} max_q QUERY[q, j]
    assert flmi_value(K, QUERY, [0], mi_form="additive") == pytest.approx(1.5 + 0.6)
    assert flmi_value(K, QUERY, [1], mi_form="additive") == pytest.approx(1.3 + 0.4)
    assert flmi_value(K, QUERY, [0, 2], mi_form="additive", eta=2.0) == pytest.approx(2.4 + 2 * (0.6 + 0.3))
    result = maximize("flmi", K, 2, query_kernel=QUERY, optimizer="naive")
    assert result.indices.tolist() == [
        0,
        1,
    ]  # after 0, candidate 1 adds 0.3 (row 2), candidate 2 also 0.3: lowest
    np.testing.assert_allclose(result.gains, [1.0, 0.3], rtol=1e-6)


def test_flcg_by_hand() -> None:
    # sum_i max(max_{j in A} K[i, j] - nu * max_p PRIVATE[i, p], 0), private cover 0.9, 0.6, 0.1
    assert flcg_value(K, PRIVATE, [0]) == pytest.approx(0.1)
    assert flcg_value(K, PRIVATE, [1]) == pytest.approx(0.2 + 0.2)
    assert flcg_value(K, PRIVATE, [2]) == pytest.approx(0.8)
    assert flcg_value(K, PRIVATE, [1, 2]) == pytest.approx(0.2 + 0.8)
    assert flcg_value(K, PRIVATE, [0], nu=0.5) == pytest.approx(0.55 + 0.2)
    result = maximize("flcg", K, 2, private_kernel=PRIVATE, optimizer="lazy")
    assert result.indices.tolist() == [2, 1]
    np.testing.assert_allclose(result.gains, [0.8, 0.2], rtol=1e-5)


def test_flmi_forms_differ_where_the_queries_matter() -> None:
    query = np.array([[0.0, 0.0, 0.4]], dtype=np.float32)  # only item/candidate 2 is relevant
    # min: rows 0 and 1 are capped at 0, row 2 at 0.4 -> candidate 2 covers the most that counts
    assert maximize("flmi", K, 1, query_kernel=query, mi_form="min").indices.tolist() == [2]
    assert flmi_value(K, query, [2]) == pytest.approx(0.4)
    # additive: covering the whole pool (candidate 0: 1.5) beats candidate 2's 1.0 + 0.4
    assert maximize("flmi", K, 1, query_kernel=query, mi_form="additive").indices.tolist() == [0]
    assert flmi_value(K, query, [0], mi_form="additive") == pytest.approx(1.5)


@pytest.mark.parametrize("seed", range(3))
def test_flmi_forms_agree_when_no_cap_binds_and_every_candidate_is_equally_relevant(seed: int) -> None:
    rng = np.random.default_rng(seed)
    kernel = random_kernel(rng, 40, 40)
    query = np.ones((2, 40), dtype=np.float32)  # caps of 1 >= every entry, relevance 1 for everyone
    fl = maximize("fl", kernel, 12)
    low = maximize("flmi", kernel, 12, query_kernel=query, mi_form="min")
    add = maximize("flmi", kernel, 12, query_kernel=query, mi_form="additive", eta=1.0)
    assert low.indices.tolist() == fl.indices.tolist() == add.indices.tolist()
    np.testing.assert_array_equal(low.gains, fl.gains)
    np.testing.assert_allclose(add.gains, fl.gains + 1.0, rtol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# Optimisers


@pytest.mark.parametrize(("objective", "options"), OBJECTIVES)
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("optimizer", ["naive", "lazy"])
def test_greedy_matches_the_greedy_of_the_formula(
    objective: str, options: dict[str, object], seed: int, optimizer: str
) -> None:
    """On a 1/8 grid every value is exact, so the picks (many ties among them) and gains must agree."""
    rng = np.random.default_rng(seed)
    kernel = random_kernel(rng, 14, 18, grid=True)
    if objective == "flmi" and options["mi_form"] == "min":
        kernel = random_kernel(rng, 18, 18, grid=True)
    kwargs = auxiliary(objective, options, rng, kernel.shape, grid=True)
    reference = brute_greedy(lambda picks: evaluate(objective, kernel, picks, **kwargs), kernel.shape[1], 10)
    result = maximize(objective, kernel, 10, optimizer=optimizer, **kwargs)
    assert result.indices.tolist() == reference
    values = [evaluate(objective, kernel, reference[:t], **kwargs) for t in range(11)]
    np.testing.assert_array_equal(result.gains, np.diff(values))


@pytest.mark.parametrize(("objective", "options"), OBJECTIVES)
@pytest.mark.parametrize("seed", range(4))
def test_lazy_picks_what_naive_picks(objective: str, options: dict[str, object], seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 150
    kernel = random_kernel(rng, n, n, grid=seed % 2 == 1)  # odd seeds: many exact ties
    kwargs = auxiliary(objective, options, rng, kernel.shape)
    naive = maximize(objective, kernel, 60, optimizer="naive", **kwargs)
    lazy = maximize(objective, kernel, 60, optimizer="lazy", **kwargs)
    assert lazy.indices.tolist() == naive.indices.tolist()
    np.testing.assert_array_equal(lazy.gains, naive.gains)
    assert lazy.n_evaluations < naive.n_evaluations


@pytest.mark.parametrize(("objective", "options"), OBJECTIVES)
@pytest.mark.parametrize("seed", range(3))
def test_lazy_picks_what_naive_picks_on_sparse_kernels(
    objective: str, options: dict[str, object], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    n = 120
    dense = random_kernel(rng, n, n) * (rng.random((n, n)) < 0.1)
    kwargs = auxiliary(objective, options, rng, dense.shape)
    for key in ("query_kernel", "private_kernel"):
        if key in kwargs:
            kwargs[key] = sp.csr_matrix(kwargs[key])
    kernel = sp.csr_matrix(dense)
    naive = maximize(objective, kernel, 50, optimizer="naive", **kwargs)
    lazy = maximize(objective, kernel, 50, optimizer="lazy", **kwargs)
    assert lazy.indices.tolist() == naive.indices.tolist()
    np.testing.assert_array_equal(lazy.gains, naive.gains)
    # the sparse kernel means the same as the dense one with zeros
    dense_result = maximize(
        objective, dense, 50, **{k: v.toarray() if sp.issparse(v) else v for k, v in kwargs.items()}
    )
    np.testing.assert_allclose(dense_result.gains, lazy.gains, rtol=1e-9)


@pytest.mark.parametrize("share", [0.02, 1.0])
def test_pruning_keeps_lazy_equal_to_naive(share: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries that can no longer count are dropped after 1, 2, 4, ... picks once few enough of them
    count (share 1.0: from the first pick on; share 0.0: never): lazy must still pick what naive picks,
    and the picks must not depend on when the kernel is pruned."""
    rng = np.random.default_rng(7)
    kernel = random_kernel(rng, 200, 200)
    query = random_kernel(rng, 3, 200)
    monkeypatch.setattr(submodular_gains, "PRUNE_SHARE", 0.0)
    unpruned = maximize("flmi", kernel, 80, query_kernel=query, optimizer="naive")
    monkeypatch.setattr(submodular_gains, "PRUNE_SHARE", share)
    naive = maximize("flmi", kernel, 80, query_kernel=query, optimizer="naive")
    lazy = maximize("flmi", kernel, 80, query_kernel=query, optimizer="lazy")
    assert lazy.indices.tolist() == naive.indices.tolist() == unpruned.indices.tolist()
    np.testing.assert_array_equal(lazy.gains, naive.gains)
    np.testing.assert_allclose(naive.gains, unpruned.gains, rtol=1e-10)


def test_kernel_layouts_and_dtypes_give_the_same_picks() -> None:
    rng = np.random.default_rng(3)
    kernel = random_kernel(rng, 90, 90)
    symmetric = np.ascontiguousarray((kernel + kernel.T) / 2)
    for base in (kernel, symmetric):
        reference = maximize("fl", base, 40)
        for variant in (np.asfortranarray(base), base.astype(np.float64), base.tolist()):
            result = maximize("fl", variant, 40)
            assert result.indices.tolist() == reference.indices.tolist()
            np.testing.assert_array_equal(result.gains, reference.gains)


def test_rectangular_kernel_covers_rows_with_columns() -> None:
    """More rows to cover than candidates, and the other way round."""
    rng = np.random.default_rng(5)
    for rows, cols in ((60, 20), (20, 60)):
        kernel = random_kernel(rng, rows, cols)
        result = maximize("fl", kernel, 8)
        assert result.indices.max() < cols
        assert result.value == pytest.approx(facility_location_value(kernel, result.indices), rel=1e-6)


def test_exactly_budget_items_even_after_the_gains_reach_zero() -> None:
    kernel = np.zeros((6, 6), dtype=np.float32)
    kernel[0, 4] = kernel[1, 4] = 1.0  # candidate 4 covers everything there is to cover
    for optimizer in ("naive", "lazy", "stochastic"):
        result = maximize("fl", kernel, 5, optimizer=optimizer, epsilon=0.5)
        assert len(result) == 5 and len(set(result.indices.tolist())) == 5
    result = maximize("fl", kernel, 5, optimizer="lazy")
    assert result.indices.tolist() == [4, 0, 1, 2, 3]  # zero gains: the lowest indices
    np.testing.assert_array_equal(result.gains, [2.0, 0, 0, 0, 0])
    assert len(maximize("fl", kernel, 6)) == 6 and len(maximize("fl", kernel, 0)) == 0


@pytest.mark.parametrize(("objective", "options"), OBJECTIVES)
def test_stochastic_greedy_is_seeded_and_close_to_naive(objective: str, options: dict[str, object]) -> None:
    rng = np.random.default_rng(11)
    kernel = random_kernel(rng, 300, 300)
    kwargs = auxiliary(objective, options, rng, kernel.shape)
    naive = maximize(objective, kernel, 60, optimizer="naive", **kwargs)
    first = maximize(objective, kernel, 60, optimizer="stochastic", epsilon=0.01, seed=1, **kwargs)
    again = maximize(
        objective, kernel, 60, optimizer="stochastic", epsilon=0.01, seed=np.random.default_rng(1), **kwargs
    )
    other = maximize(objective, kernel, 60, optimizer="stochastic", epsilon=0.01, seed=2, **kwargs)
    assert first.indices.tolist() == again.indices.tolist()
    assert first.indices.tolist() != other.indices.tolist()
    assert first.value >= 0.97 * naive.value
    # each step looks at ceil(n / k * log(1 / epsilon)) = 24 of the remaining candidates
    assert first.n_evaluations == 60 * math.ceil(300 / 60 * math.log(100))
    np.testing.assert_allclose(
        first.gains,
        np.diff([evaluate(objective, kernel, first.indices[:t], **kwargs) for t in range(61)]),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize(("objective", "options"), OBJECTIVES)
@pytest.mark.parametrize("seed", range(8))
def test_greedy_is_within_one_minus_one_over_e_of_the_optimum(
    objective: str, options: dict[str, object], seed: int
) -> None:
    """All four objectives are monotone submodular, so greedy reaches at least (1 - 1/e) of the best set."""
    rng = np.random.default_rng(100 + seed)
    kernel = random_kernel(rng, 8, 8) ** 3  # skewed values make greedy's mistakes likelier
    kwargs = auxiliary(objective, options, rng, kernel.shape)
    best = max(evaluate(objective, kernel, list(s), **kwargs) for s in itertools.combinations(range(8), 3))
    for optimizer in ("naive", "lazy"):
        result = maximize(objective, kernel, 3, optimizer=optimizer, **kwargs)
        assert result.value >= (1 - 1 / math.e) * best - 1e-9
        assert result.value <= best + 1e-6


@pytest.mark.parametrize(("objective", "options"), OBJECTIVES)
def test_gains_are_the_successive_differences_of_the_objective(
    objective: str, options: dict[str, object]
) -> None:
    rng = np.random.default_rng(21)
    kernel = random_kernel(rng, 70, 70)
    kwargs = auxiliary(objective, options, rng, kernel.shape)
    result = maximize(objective, kernel, 30, **kwargs)
    values = [evaluate(objective, kernel, result.indices[:t], **kwargs) for t in range(31)]
    np.testing.assert_allclose(result.gains, np.diff(values), rtol=1e-6, atol=1e-6)
    assert result.value == pytest.approx(values[-1], rel=1e-6)
    assert isinstance(result, SubmodularResult) and result.indices.dtype == np.int64


# ----------------------------------------------------------------------------------------------------------
# submodlib as an outside reference (DELIFT's library)


def test_same_picks_and_gains_as_submodlib() -> None:
    submodlib = pytest.importorskip("submodlib")
    rng = np.random.default_rng(0)
    n, budget = 50, 15
    kernel = random_kernel(rng, n, n)  # not symmetric: rows are covered, columns picked, in both
    query = random_kernel(rng, 4, n)
    private = 0.8 * random_kernel(rng, n, 3)
    cases = [
        ("fl", {}, submodlib.FacilityLocationFunction(n, mode="dense", sijs=kernel, separate_rep=False)),
        (
            "flcg",
            {"private_kernel": private, "nu": 0.7},
            submodlib.FacilityLocationConditionalGainFunction(
                n,
                3,
                data_sijs=kernel.astype(np.float64),
                private_sijs=private.astype(np.float64),
                privacyHardness=0.7,
            ),
        ),
        (
            "flmi",
            {"query_kernel": query, "mi_form": "min", "eta": 2.0},
            submodlib.FacilityLocationMutualInformationFunction(
                n,
                4,
                data_sijs=kernel.astype(np.float64),
                query_sijs=query.T.astype(np.float64),
                magnificationEta=2.0,
            ),
        ),
    ]
    for objective, kwargs, function in cases:
        for theirs in ("NaiveGreedy", "LazyGreedy"):
            picks = function.maximize(
                budget, optimizer=theirs, stopIfZeroGain=False, stopIfNegativeGain=False, show_progress=False
            )
            ours = maximize(objective, kernel, budget, **kwargs)
            assert ours.indices.tolist() == [int(i) for i, _ in picks], (objective, theirs)
            np.testing.assert_allclose(ours.gains, [g for _, g in picks], rtol=1e-5)
            assert evaluate(objective, kernel, ours.indices, **kwargs) == pytest.approx(
                function.evaluate(set(ours.indices.tolist())), rel=1e-5
            )
    # submodlib's FL2MI covers the queries: the additive form with the queries as the rows to cover
    variant = submodlib.FacilityLocationVariantMutualInformationFunction(
        n, 4, query_sijs=query.T.astype(np.float64)
    )
    picks = variant.maximize(
        budget, optimizer="NaiveGreedy", stopIfZeroGain=False, stopIfNegativeGain=False, show_progress=False
    )
    ours = maximize("flmi", query, budget, query_kernel=query, mi_form="additive")
    assert ours.indices.tolist() == [int(i) for i, _ in picks]


# ----------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: maximize("logdet", K, 1), "objective='logdet' is unknown"),
        (lambda: maximize("fl", K, 1, optimizer="lazier"), "optimizer='lazier' is unknown"),
        (lambda: maximize("flmi", K, 1, query_kernel=QUERY, mi_form="max"), "mi_form='max' is unknown"),
        (lambda: maximize("fl", K, 4), r"budget=4 is out of range: expected 0 <= budget <= 3"),
        (lambda: maximize("fl", K, -1), "budget=-1 is out of range"),
        (lambda: maximize("fl", K, 1.5), "budget=1.5 is not an integer"),
        (lambda: maximize("fl", np.ones(3), 1), r"kernel has shape \(3,\): expected a 2-d array"),
        (lambda: maximize("fl", np.array([[0.1, np.nan], [0.2, 0.3]]), 1), "kernel contains NaN"),
        (lambda: maximize("fl", np.array([[0.1, -0.5], [0.2, 0.3]]), 1), "kernel has negative entries"),
        (
            lambda: maximize("fl", sp.csr_matrix(np.array([[0.1, np.inf], [0.2, 0.3]])), 1),
            "kernel contains NaN or infinite",
        ),
        (lambda: maximize("flmi", K, 1), "query_kernel is required for objective='flmi'"),
        (lambda: maximize("fl", K, 1, query_kernel=QUERY), "query_kernel is only used by objective='flmi'"),
        (lambda: maximize("flcg", K, 1), "private_kernel is required for objective='flcg'"),
        (
            lambda: maximize("flmi", K, 1, private_kernel=PRIVATE, query_kernel=QUERY),
            "private_kernel is only used",
        ),
        (
            lambda: maximize("flmi", K, 1, query_kernel=QUERY.T),
            r"query_kernel has shape \(3, 2\): expected \('n', 3\)",
        ),
        (
            lambda: maximize("flcg", K, 1, private_kernel=PRIVATE.T),
            r"private_kernel has shape \(2, 3\): expected \(3, 'n'\)",
        ),
        (lambda: maximize("flmi", K, 1, query_kernel=np.full((2, 3), np.nan)), "query_kernel contains NaN"),
        (lambda: maximize("flmi", K, 1, query_kernel=QUERY, eta=-1.0), "eta=-1.0 is invalid"),
        (lambda: maximize("flcg", K, 1, private_kernel=PRIVATE, nu=float("nan")), "nu=nan is invalid"),
        (lambda: maximize("fl", K, 1, optimizer="stochastic", epsilon=1.0), "epsilon=1.0 is invalid"),
        (lambda: maximize("fl", K, 1, optimizer="stochastic", seed="x"), "seed='x' is invalid"),
        (lambda: facility_location_value(K, [0, 0]), "indices contains duplicates"),
        (lambda: facility_location_value(K, [3]), r"indices must lie in \[0, 3\)"),
        (lambda: maximize("fl", np.array([["a", "b"], ["c", "d"]]), 1), "could not convert|dtype"),
    ],
)
def test_bad_arguments_are_one_line_errors(call: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match) as error:
        call()
    assert "\n" not in str(error.value)
