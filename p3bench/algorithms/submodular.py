"""Submodular maximisation for DELIFT's three objectives, array in, indices and gains out.

DELIFT (Agarwal, Killamsetty, Popa & Danilevsky, arXiv 2411.04425, ICLR 2025) selects fine-tuning data by
maximising a submodular function of a utility kernel under a budget, with a different function for each
fine-tuning stage. This module implements those functions and the greedy maximisers; it knows nothing of
models or data.

Kernel convention
-----------------
``kernel[i, j]`` is how much candidate ``j`` covers (helps) item ``i``: **rows are the items to cover,
columns are the candidates**. This is DELIFT's ``U[i, j]`` (row: the target ``i``, column: the in-context
example ``j``) and submodlib's dense ``sijs[i][j]`` (``i`` the covered item, ``j`` the selected one; see
``FacilityLocation::marginalGainWithMemoization``). The kernel need not be square nor symmetric; for a
selection from a pool that covers the same pool it is ``n x n``. Kernels must be finite and ``>= 0``
(DELIFT min-max scales its kernel into [0, 1]; DELIFT-SE uses ``(cos + 1) / 2``); a ``scipy.sparse``
kernel (e.g. each row's k nearest candidates) leaves the missing entries at 0, which is what they would
contribute to every maximum below. Every maximum over a set is taken together with 0, so the empty set
has value 0 (submodlib's maxima start at 0 too).

Objectives (``objective=``)
---------------------------
- ``"fl"``, facility location (DELIFT stage 1, instruction tuning)::

      f(A) = sum_i max_{j in A} K[i, j]

- ``"flmi"``, facility-location mutual information with a target (query) set ``Q`` (stage 2,
  task-specific tuning). ``query_kernel[q, j]`` is how much pool item ``j`` helps query ``q`` (rows: the
  queries, DELIFT's ``U(target q, example j)``; submodlib's ``query_sijs`` is its transpose, ``n x
  n_queries``). Two forms (``mi_form=``):

  - ``"min"`` (default: what DELIFT's code runs, submodlib's ``FacilityLocationMutualInformationFunction``,
    ``cpp/smi/FacilityLocationMutualInformation.cpp``)::

        f(A) = sum_i min(max_{j in A} K[i, j], eta * max_{q in Q} query_kernel[q, i])

    The cap is a property of the covered row ``i``, so ``query_kernel`` has one column per *row* of
    ``kernel``: shape ``(n_queries, kernel.shape[0])``. Since ``min(max_j a_j, c) = max_j min(a_j, c)``
    it is facility location on the kernel with each row clipped at its cap: a row only counts up to its
    relevance to the queries, and saturates once covered that far.
  - ``"additive"`` (the form printed in the paper, Eq. 4)::

        f(A) = sum_i max_{j in A} K[i, j] + eta * sum_{j in A} max_{q in Q} query_kernel[q, j]

    facility location plus a modular query-relevance term per *candidate*: shape ``(n_queries,
    kernel.shape[1])``. submodlib's FL2MI (``FacilityLocationVariantMutualInformationFunction``) is the
    same form with the queries as the covered rows: ``kernel=query_kernel`` here.

  Both are monotone submodular. On a square kernel both take ``query_kernel`` of shape ``(n_queries, n)``.
  They pick the same when no cap binds (every row's cap is at least its largest kernel entry: "min" is
  then FL) and every candidate is equally relevant to the queries ("additive" is then FL plus a constant
  per pick). They differ when the queries matter: "min" stops crediting a row once it is covered up to its
  relevance to the queries (irrelevant rows count for nothing), while "additive" keeps covering the whole
  pool and adds a bonus to the candidates the queries find useful.
- ``"flcg"``, facility-location conditional gain against private (already seen) data ``P`` (stage 3,
  continual tuning; submodlib's ``FacilityLocationConditionalGainFunction``, whose formula is the paper's
  Eq. 5)::

      f(A | P) = sum_i max(max_{j in A} K[i, j] - nu * max_{p in P} private_kernel[i, p], 0)

  ``private_kernel[i, p]`` is how much existing item ``p`` covers row ``i``: shape ``(kernel.shape[0],
  n_private)``, the orientation of ``kernel`` and of submodlib's ``private_sijs`` (DELIFT's ``U(valid=new,
  train=existing)``). It is facility location with each row already covered up to ``nu * max_p``;
  monotone submodular.

:func:`facility_location_value`, :func:`flmi_value` and :func:`flcg_value` evaluate ``f(A)`` directly from
these formulas (the reference the greedy is tested against).

Optimisers (``optimizer=``)
---------------------------
``"naive"`` greedy, ``"lazy"`` greedy (Minoux, "Accelerated greedy algorithms for maximizing submodular set
functions", 1978; the same picks as naive greedy, ties to the lowest index in both) and ``"stochastic"``
greedy (Mirzasoleiman et al., "Lazier Than Lazy Greedy", arXiv 1409.7938: each step the best of ``ceil(n /
budget * log(1 / epsilon))`` random remaining candidates, seeded). All return exactly ``budget`` items, as
submodlib's ``maximize(..., stopIfZeroGain=False, stopIfNegativeGain=False)`` does, which is how DELIFT
calls it (with ``LazyGreedy`` and a 30% budget).

Implementation: this module's own vectorised greedy, not submodlib
--------------------------------------------------------------------
The optimisers (:mod:`p3bench.algorithms.submodular_greedy`) get the marginal gains of many candidates at
once from :mod:`p3bench.algorithms.submodular_gains`: NumPy over one row per candidate (the kernel itself
when it is Fortran-ordered or symmetric, else a float32 transposed copy, ``4 x rows x candidates`` bytes),
each term a float32 difference and each gain a float64 sum, as in submodlib; and, once few enough entries
can still raise a row's coverage, only those entries (an exact pruning: the rest contribute 0 for good).
Lazy greedy makes exactly naive greedy's picks. Facility location, n = 10,000, budget 3,000, lazy greedy,
the three in one process, medians of 3 interleaved runs on 2 CPU cores shared with other jobs (load
average 4.1-4.4, so absolute times are those of a busy machine)::

    OMP_NUM_THREADS=1 python benchmarks/submodular_fl.py --repeat 3               # symmetric (cos + 1) / 2
    OMP_NUM_THREADS=1 python benchmarks/submodular_fl.py --repeat 3 --asymmetric  # columns scaled, like U

    kernel        ours     submodlib 0.0.3 LazyGreedy   apricot 0.6.1 lazy
    symmetric     2.49 s   20.38 s (8.2x)               22.48 s (9.0x)
    asymmetric    1.79 s   10.38 s (5.8x)               13.29 s (7.4x)

The same objective value as submodlib's selection in both; the same picks in the same order up to the
first exact tie between two candidates' gains (pick 384 of 3,000 on the symmetric kernel, where mutually
nearest pairs tie; pick 2,518 on the asymmetric one), which submodlib breaks by its heap order and this
module by the lowest index. So the bench uses this implementation; submodlib stays an outside reference in
``tests/test_submodular.py`` (same picks and gains on tie-free kernels, for FL, FLMI and FLCG). apricot's
naive greedy makes our picks too; its lazy greedy ends a step once its best re-evaluated gain is 0 and a
second one is 0 as well, and so can pick a zero-gain candidate while others still gain (pick 22 on the
asymmetric kernel; ``apricot/optimizers.py``, ``LazyGreedy.select``).

Departures from submodlib: ties go to the lowest index (submodlib's lazy greedy prefers the higher index
among equal bounds and its naive greedy follows hash-set order), a budget equal to the number of
candidates is allowed (submodlib requires fewer), and negative kernel entries are refused instead of being
counted as 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from p3bench.algorithms.submodular_gains import CoverageGains
from p3bench.algorithms.submodular_greedy import (
    GreedyTrace,
    lazy_greedy,
    naive_greedy,
    stochastic_greedy,
)

__all__ = [
    "MI_FORMS",
    "OBJECTIVES",
    "OPTIMIZERS",
    "SubmodularResult",
    "evaluate",
    "facility_location_value",
    "flcg_value",
    "flmi_value",
    "maximize",
]

OBJECTIVES: tuple[str, ...] = ("fl", "flmi", "flcg")
OPTIMIZERS: tuple[str, ...] = ("naive", "lazy", "stochastic")
MI_FORMS: tuple[str, ...] = ("min", "additive")

Kernel = Any  # a 2-d array-like or a scipy.sparse matrix/array
_ROWS_PER_BLOCK = 256


@dataclass(frozen=True)
class SubmodularResult:
    """The outcome of a greedy maximisation.

    Attributes:
        indices: the picked candidates (column indices of the kernel), in pick order (int64).
        gains: each pick's marginal gain ``f(A + j) - f(A)`` when it was picked (float64); they sum to
            ``f`` of the selection.
        n_evaluations: how many single-candidate marginal gains were computed (naive greedy: ``sum_t (n -
            t)``; lazy greedy: ``n`` for the first pick plus the re-evaluations).
    """

    indices: NDArray[np.int64]
    gains: NDArray[np.float64]
    n_evaluations: int

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @property
    def value(self) -> float:
        """``f`` of the selection: the sum of the gains (``f`` of the empty set is 0)."""
        return float(np.sum(self.gains))


# --------------------------------------------------------------------------------------------------------
# Input checks


def _choice(value: str, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is unknown: expected one of {', '.join(choices)}")
    return value


def _weight(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}={value!r} is not a number: expected a finite value >= 0")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}={value} is invalid: expected a finite value >= 0")
    return float(value)


def _check_values(block: Any, name: str) -> None:
    if not np.all(np.isfinite(block)):
        raise ValueError(f"{name} contains NaN or infinite values: expected a finite kernel")
    if block.size and block.min() < 0:
        raise ValueError(
            f"{name} has negative entries (min {float(block.min()):.4g}): expected values >= 0, "
            "e.g. min-max scaled into [0, 1]"
        )


def _shape(kernel: Kernel, name: str) -> tuple[int, int]:
    shape = kernel.shape if sp.issparse(kernel) else np.shape(kernel)
    if len(shape) != 2:
        raise ValueError(f"{name} has shape {tuple(shape)}: expected a 2-d array")
    return int(shape[0]), int(shape[1])


def _dense(kernel: Kernel, name: str) -> NDArray[Any]:
    array = kernel if isinstance(kernel, np.ndarray) else np.asarray(kernel, dtype=np.float32)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} has dtype {array.dtype}: expected real numbers")
    return array


def _sparse(kernel: Kernel, name: str, fmt: str) -> sp.spmatrix:
    matrix = (
        sp.csc_matrix(kernel, dtype=np.float32) if fmt == "csc" else sp.csr_matrix(kernel, dtype=np.float32)
    )
    matrix.sum_duplicates()
    matrix.sort_indices()
    _check_values(matrix.data, name)
    return matrix


def checked_kernel(kernel: Kernel, name: str = "kernel") -> Kernel:
    """``kernel`` after its checks (2-d, real, finite, ``>= 0``, read as float32): a dense array as given
    (a list becomes a float32 array), a sparse one as a canonical float32 CSC matrix. The dense checks run
    ``_ROWS_PER_BLOCK`` rows (or columns, for a Fortran-ordered array) at a time, without a copy."""
    _shape(kernel, name)
    if sp.issparse(kernel):
        return _sparse(kernel, name, "csc")
    array = _dense(kernel, name)
    lines = array.T if array.flags.f_contiguous and not array.flags.c_contiguous else array
    for start in range(0, lines.shape[0], _ROWS_PER_BLOCK):
        _check_values(np.asarray(lines[start : start + _ROWS_PER_BLOCK], dtype=np.float32), name)
    return array


def _best_per(
    matrix: Kernel, axis: int, name: str, shape: tuple[int | None, int | None]
) -> NDArray[np.float32]:
    """``max(0, max over `axis`)`` of a query or private kernel (float32), after checking its shape against
    ``shape`` (None: any size >= 1)."""
    got = _shape(matrix, name)
    want = tuple("n" if s is None else s for s in shape)
    if any(s is not None and g != s for g, s in zip(got, shape, strict=True)) or min(got) == 0:
        raise ValueError(f"{name} has shape {got}: expected {want}")
    if sp.issparse(matrix):
        best = np.asarray(_sparse(matrix, name, "csr").max(axis=axis).todense()).ravel()
    else:
        array = _dense(matrix, name)
        _check_values(array, name)
        best = np.asarray(array, dtype=np.float32).max(axis=axis)
    return np.maximum(best.astype(np.float32), np.float32(0.0))


def _indices(indices: Sequence[int] | NDArray[np.integer], n: int) -> NDArray[np.int64]:
    idx = np.asarray(indices)
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(
            f"indices must be a 1-d sequence of integers: got shape {idx.shape}, dtype {idx.dtype}"
        )
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"indices must lie in [0, {n}): got {idx.min()}..{idx.max()}")
    if np.unique(idx).size != idx.size:
        raise ValueError("indices contains duplicates: expected a set of candidates")
    return idx.astype(np.int64)


def _budget(budget: int, n_candidates: int) -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise ValueError(f"budget={budget!r} is not an integer: expected 0 <= budget <= {n_candidates}")
    if not 0 <= budget <= n_candidates:
        raise ValueError(
            f"budget={budget} is out of range: expected 0 <= budget <= {n_candidates} (the kernel's columns)"
        )
    return int(budget)


# --------------------------------------------------------------------------------------------------------
# Objective values (direct, from the formulas)


def _coverage(kernel: Kernel, indices: NDArray[np.int64]) -> NDArray[np.float32]:
    """``max(0, max_{j in A} K[i, j])`` for every row ``i`` (float32)."""
    n_rows = _shape(kernel, "kernel")[0]
    if indices.size == 0:
        return np.zeros(n_rows, dtype=np.float32)
    if sp.issparse(kernel):
        columns = _sparse(kernel, "kernel", "csc")[:, indices]
        return np.asarray(columns.max(axis=1).todense(), dtype=np.float32).ravel()
    array = _dense(kernel, "kernel")
    out = np.empty(n_rows, dtype=np.float32)
    for start in range(0, n_rows, _ROWS_PER_BLOCK):
        block = np.asarray(array[start : start + _ROWS_PER_BLOCK][:, indices], dtype=np.float32)
        _check_values(block, "kernel")
        out[start : start + _ROWS_PER_BLOCK] = block.max(axis=1)
    return np.maximum(out, np.float32(0.0))


def facility_location_value(kernel: Kernel, indices: Sequence[int] | NDArray[np.integer]) -> float:
    """``f(A) = sum_i max_{j in A} kernel[i, j]`` (rows: covered items, columns: candidates)."""
    _, n_cols = _shape(kernel, "kernel")
    return float(np.sum(_coverage(kernel, _indices(indices, n_cols)), dtype=np.float64))


def flmi_value(
    kernel: Kernel,
    query_kernel: Kernel,
    indices: Sequence[int] | NDArray[np.integer],
    *,
    eta: float = 1.0,
    mi_form: str = "min",
) -> float:
    """FL mutual information of ``A`` with the queries (see the module docstring for both forms):
    ``"min"``: ``sum_i min(max_{j in A} K[i, j], eta max_q query_kernel[q, i])``, ``query_kernel`` of shape
    ``(n_queries, kernel.shape[0])``; ``"additive"``: ``sum_i max_{j in A} K[i, j] + eta sum_{j in A}
    max_q query_kernel[q, j]``, ``query_kernel`` of shape ``(n_queries, kernel.shape[1])``."""
    n_rows, n_cols = _shape(kernel, "kernel")
    _choice(mi_form, "mi_form", MI_FORMS)
    eta = _weight(eta, "eta")
    idx = _indices(indices, n_cols)
    cov = _coverage(kernel, idx)
    if mi_form == "min":
        cap = np.float32(eta) * _best_per(query_kernel, 0, "query_kernel", (None, n_rows))
        return float(np.sum(np.minimum(cov, cap), dtype=np.float64))
    relevance = np.float32(eta) * _best_per(query_kernel, 0, "query_kernel", (None, n_cols))
    return float(np.sum(cov, dtype=np.float64) + np.sum(relevance[idx], dtype=np.float64))


def flcg_value(
    kernel: Kernel, private_kernel: Kernel, indices: Sequence[int] | NDArray[np.integer], *, nu: float = 1.0
) -> float:
    """FL conditional gain ``sum_i max(max_{j in A} K[i, j] - nu max_p private_kernel[i, p], 0)``;
    ``private_kernel`` of shape ``(kernel.shape[0], n_private)``."""
    n_rows, n_cols = _shape(kernel, "kernel")
    nu = _weight(nu, "nu")
    base = np.float32(nu) * _best_per(private_kernel, 1, "private_kernel", (n_rows, None))
    cov = _coverage(kernel, _indices(indices, n_cols))
    return float(np.sum(np.maximum(cov - base, np.float32(0.0)), dtype=np.float64))


def evaluate(
    objective: str,
    kernel: Kernel,
    indices: Sequence[int] | NDArray[np.integer],
    *,
    query_kernel: Kernel | None = None,
    private_kernel: Kernel | None = None,
    eta: float = 1.0,
    nu: float = 1.0,
    mi_form: str = "min",
) -> float:
    """``f(indices)`` for ``objective`` in :data:`OBJECTIVES`, with the arguments of :func:`maximize`."""
    _choice(objective, "objective", OBJECTIVES)
    _aux_arguments(objective, query_kernel, private_kernel)
    if objective == "fl":
        return facility_location_value(kernel, indices)
    if objective == "flmi":
        return flmi_value(kernel, query_kernel, indices, eta=eta, mi_form=mi_form)
    return flcg_value(kernel, private_kernel, indices, nu=nu)


def _aux_arguments(objective: str, query_kernel: Kernel | None, private_kernel: Kernel | None) -> None:
    if objective == "flmi" and query_kernel is None:
        raise ValueError("query_kernel is required for objective='flmi': expected (n_queries, n) utilities")
    if objective != "flmi" and query_kernel is not None:
        raise ValueError(f"query_kernel is only used by objective='flmi', not objective={objective!r}")
    if objective == "flcg" and private_kernel is None:
        raise ValueError("private_kernel is required for objective='flcg': expected (n, n_private) utilities")
    if objective != "flcg" and private_kernel is not None:
        raise ValueError(f"private_kernel is only used by objective='flcg', not objective={objective!r}")


# --------------------------------------------------------------------------------------------------------
# Maximisation


def maximize(
    objective: str,
    kernel: Kernel,
    budget: int,
    *,
    query_kernel: Kernel | None = None,
    private_kernel: Kernel | None = None,
    eta: float = 1.0,
    nu: float = 1.0,
    mi_form: str = "min",
    optimizer: str = "lazy",
    epsilon: float = 0.01,
    seed: int | np.random.Generator = 0,
    progress: bool = False,
) -> SubmodularResult:
    """Greedily pick ``budget`` candidates (columns of ``kernel``) maximising ``objective``.

    Args:
        objective: ``"fl"``, ``"flmi"`` or ``"flcg"`` (module docstring).
        kernel: ``(n_rows, n_candidates)``, rows the items to cover, columns the candidates; a dense
            array (any real dtype, read as float32) or a ``scipy.sparse`` matrix (missing entries 0).
            Finite and ``>= 0``. A dense kernel is not copied when it is Fortran-ordered (e.g.
            ``np.asfortranarray``, or built column by column) or a symmetric C-ordered float32 array;
            otherwise the greedy holds a float32 transposed copy (``4 n_rows n_candidates`` bytes) until
            it prunes the entries that can no longer count.
        budget: how many candidates to pick, ``0 <= budget <= n_candidates``; exactly this many are
            returned (no stop on zero gain).
        query_kernel: ``"flmi"`` only: ``(n_queries, n_rows)`` for ``mi_form="min"``, ``(n_queries,
            n_candidates)`` for ``"additive"``; dense or sparse, ``>= 0``.
        private_kernel: ``"flcg"`` only: ``(n_rows, n_private)``; dense or sparse, ``>= 0``.
        eta: FLMI's query weight (>= 0; DELIFT and submodlib use 1).
        nu: FLCG's weight of the private data (>= 0; 1 in DELIFT and submodlib).
        mi_form: ``"min"`` (submodlib's FLMI, what DELIFT's code runs) or ``"additive"`` (the paper's Eq. 4).
        optimizer: ``"naive"``, ``"lazy"`` (the same picks as naive, faster) or ``"stochastic"``.
        epsilon: stochastic greedy's ``epsilon`` in (0, 1): each step samples ``ceil(n / budget *
            log(1 / epsilon))`` remaining candidates.
        seed: stochastic greedy's seed or ``numpy.random.Generator``.
        progress: a progress bar over the picks.

    Returns:
        :class:`SubmodularResult` (picks in order, their gains, the number of gain evaluations).

    Raises:
        ValueError: one line naming the argument: an unknown objective, optimizer or form, a kernel that is
            not 2-d, not finite or negative, an auxiliary kernel of the wrong shape or given for the wrong
            objective, a budget out of range, a weight or epsilon out of range.
    """
    _choice(objective, "objective", OBJECTIVES)
    _choice(optimizer, "optimizer", OPTIMIZERS)
    _choice(mi_form, "mi_form", MI_FORMS)
    _aux_arguments(objective, query_kernel, private_kernel)
    eta, nu = _weight(eta, "eta"), _weight(nu, "nu")
    if optimizer == "stochastic" and not (
        isinstance(epsilon, (int, float, np.floating)) and 0.0 < float(epsilon) < 1.0
    ):
        raise ValueError(f"epsilon={epsilon!r} is invalid: expected a value in (0, 1)")
    if optimizer == "stochastic" and not isinstance(seed, (int, np.integer, np.random.Generator)):
        raise ValueError(f"seed={seed!r} is invalid: expected an integer or a numpy.random.Generator")
    n_rows, n_cols = _shape(kernel, "kernel")
    budget = _budget(budget, n_cols)

    cap = base = bonus = None
    if objective == "flmi" and mi_form == "min":
        cap = np.float32(eta) * _best_per(query_kernel, 0, "query_kernel", (None, n_rows))
    elif objective == "flmi":
        relevance = np.float32(eta) * _best_per(query_kernel, 0, "query_kernel", (None, n_cols))
        bonus = relevance.astype(np.float64)
    elif objective == "flcg":
        base = np.float32(nu) * _best_per(private_kernel, 1, "private_kernel", (n_rows, None))
    cov = CoverageGains(checked_kernel(kernel), cap=cap, base=base, bonus=bonus)

    trace: GreedyTrace
    if optimizer == "naive":
        trace = naive_greedy(cov, budget, progress=progress)
    elif optimizer == "lazy":
        trace = lazy_greedy(cov, budget, lower=bonus, progress=progress)
    else:
        trace = stochastic_greedy(
            cov, budget, epsilon=float(epsilon), rng=np.random.default_rng(seed), progress=progress
        )
    return SubmodularResult(trace.indices, trace.gains, trace.n_evaluations)
