"""Self-paced learning: closed-form example weights and a growing pace schedule, on plain numpy arrays.

Self-paced learning (SPL) trains on the examples the current model finds easy and lets harder ones in as
training goes on. It jointly minimises over the model ``w`` and per-example weights ``v`` in [0, 1]::

    min_{w, v}  sum_i v_i * l_i(w) + f(v; lam)

where ``l_i`` is the difficulty (loss) of example ``i`` and ``f`` is the self-paced regulariser whose
*age* parameter ``lam`` grows round by round. For fixed ``w`` the problem separates per example and has a
closed-form minimiser ``v*(l; lam)``, implemented by :func:`spl_weights`:

- ``hard`` (Kumar, Packer & Koller, "Self-Paced Learning for Latent Variable Models", NeurIPS 2010):
  ``f(v) = -lam * sum v``. The objective ``v * (l - lam)`` is linear in ``v``, so ``v* = 1[l < lam]``.
- ``linear`` (Jiang, Meng, Mitamura & Hauptmann, "Easy Samples First: Self-paced Reranking for
  Zero-Example Multimedia Search", ACM MM 2014): ``f(v) = lam * (0.5 * ||v||^2 - sum v)``. The per-example
  objective ``v*l + lam*(v^2/2 - v)`` is convex with stationary point ``l + lam*v - lam = 0``, so
  ``v* = clip(1 - l/lam, 0, 1)`` (``lam > 0``).
- ``log`` (logarithmic regulariser, Jiang et al. 2014): with ``zeta = 1 - lam`` and ``0 < lam < 1``,
  ``f(v) = sum (zeta * v - zeta**v / log(zeta))``. The per-example objective ``v*l + zeta*v -
  zeta**v/log(zeta)`` has derivative ``l + zeta - zeta**v`` and second derivative
  ``-zeta**v * log(zeta) > 0`` (convex); the stationary point ``zeta**v = l + zeta`` gives
  ``v* = log(l + zeta) / log(zeta)``, which lies in (0, 1] exactly when ``0 <= l < lam``; ``v* = 0`` for
  ``l >= lam`` and ``v* = 1`` for ``l <= 0``.

(Jiang et al. also define a *mixture* regulariser with two parameters; it is not implemented here.)

Convention: inputs are **difficulties** (higher = harder, e.g. a loss). A caller holding scores where
higher = easier (P3's answer probability) passes ``difficulty = -log(score)`` or ``1 - score``.

:class:`SelfPacedSchedule` is the hard pace a method applies across rounds. Its ``quantile`` mode is the
pace of P3 (arXiv 2408.05541, public code: epoch ``e``, 1-based, admits the easiest
``min(1, 0.2 + 0.2 * (e - 1))`` fraction); here rounds are 0-based, so round ``r`` admits
``min(1, start + step * r)``. Its ``lambda`` mode is the classic SPL pace: ``lambda_r = lambda0 *
growth**r`` and an example is admitted when its difficulty is below ``lambda_r``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

SPL_KINDS = ("hard", "linear", "log")
PACE_MODES = ("quantile", "lambda")

# Fractions are rounded to this many decimals before ceil(fraction * n), so that 0.2 + 0.2 * 2 =
# 0.6000000000000001 of 10 examples admits 6, not 7.
_FRACTION_DECIMALS = 12


def _as_difficulty(difficulty: Any, *, one_dimensional: bool) -> np.ndarray:
    """``difficulty`` as a float64 array, rejecting NaN (which has no place in an easy-to-hard order)."""
    values = np.asarray(difficulty, dtype=np.float64)
    if one_dimensional and values.ndim != 1:
        raise ValueError(f"difficulty must be a 1-D array, got shape {values.shape}")
    nan = int(np.isnan(values).sum())
    if nan:
        raise ValueError(f"difficulty has {nan} NaN value(s): expected real numbers (inf is allowed)")
    return values


def _check_lam(lam: float, kind: str) -> float:
    if kind not in SPL_KINDS:
        raise ValueError(
            f"unknown self-paced regulariser kind {kind!r}: expected one of {', '.join(SPL_KINDS)}"
        )
    try:
        lam = float(lam)
    except (TypeError, ValueError):
        raise ValueError(f"lam must be a real number, got {lam!r}") from None
    if not math.isfinite(lam):
        raise ValueError(f"lam must be finite for the {kind!r} regulariser, got {lam!r}")
    if kind == "linear" and lam <= 0:
        raise ValueError(f"lam must be > 0 for the 'linear' regulariser, got {lam!r}")
    if kind == "log" and not 0 < lam < 1:
        raise ValueError(
            f"lam must be in (0, 1) for the 'log' regulariser (zeta = 1 - lam), got {lam!r}; "
            "use difficulties in [0, 1), e.g. 1 - score"
        )
    return lam


def spl_weights(difficulty: np.ndarray, lam: float, kind: str) -> np.ndarray:
    """Closed-form optimal self-paced weights ``v* = argmin_{v in [0,1]} v*l + f(v; lam)``, elementwise.

    See the module docstring for the derivations. ``hard`` (Kumar et al., NeurIPS 2010) returns
    ``1[l < lam]`` (any finite ``lam``); ``linear`` (Jiang et al., ACM MM 2014) returns
    ``clip(1 - l/lam, 0, 1)`` (``lam > 0``); ``log`` (Jiang et al., ACM MM 2014) returns
    ``log(l + zeta)/log(zeta)`` for ``l < lam`` and 0 otherwise, with ``zeta = 1 - lam`` (``0 < lam < 1``),
    clipped to 1 for ``l <= 0``.

    Args:
        difficulty: per-example difficulties (any shape; higher = harder, e.g. a loss). NaN is rejected.
        lam: the age parameter of the regulariser.
        kind: ``"hard"``, ``"linear"`` or ``"log"``.

    Returns:
        float64 weights in [0, 1] of the same shape as ``difficulty``.

    Raises:
        ValueError: unknown ``kind``, ``lam`` outside its domain, or NaN difficulties (one line).
    """
    lam = _check_lam(lam, kind)
    values = _as_difficulty(difficulty, one_dimensional=False)
    if kind == "hard":
        return (values < lam).astype(np.float64)
    if kind == "linear":
        # (lam - l) / lam rather than 1 - l/lam: exact for l just below lam (Sterbenz), so an example at the
        # threshold of a quantile pace keeps a tiny positive weight instead of rounding to 0; +-inf clip to 0/1
        return np.clip((lam - values) / lam, 0.0, 1.0)
    # log(l + zeta) / log(zeta) with zeta = 1 - lam, written with log1p so that it stays accurate for l
    # close to lam and for lam below the float resolution of 1 - lam
    weights = np.zeros_like(values)
    inside = (values > 0) & (values < lam)
    weights[inside] = np.log1p(values[inside] - lam) / math.log1p(-lam)
    weights[values <= 0] = 1.0
    return np.clip(weights, 0.0, 1.0)


def spl_objective(v: np.ndarray | float, difficulty: np.ndarray | float, lam: float, kind: str) -> np.ndarray:
    """The per-example self-paced objective ``v*l + f(v; lam)`` that :func:`spl_weights` minimises over
    ``v in [0, 1]`` (broadcast elementwise). Useful to check the closed forms and to log the SPL energy."""
    lam = _check_lam(lam, kind)
    v = np.asarray(v, dtype=np.float64)
    values = np.asarray(difficulty, dtype=np.float64)
    if kind == "hard":
        return v * values - lam * v
    if kind == "linear":
        return v * values + lam * (0.5 * v**2 - v)
    zeta = 1.0 - lam
    return v * values + zeta * v - zeta**v / math.log1p(-lam)


@dataclass
class SelfPacedSchedule:
    """A hard self-paced pace, applied by a method at each selection round (``round`` is 0-based).

    Modes:
        ``quantile`` (P3, arXiv 2408.05541): round ``r`` admits the ``k = ceil(n * min(1, start + step*r))``
        easiest examples (at least one when the fraction is positive). Ties at the threshold are resolved
        by index (lower index first), so the admitted count is exactly ``k``. P3's public code uses
        ``start = step = 0.2``; its 1-based epoch ``e`` is round ``e - 1`` here.
        ``lambda`` (Kumar et al., NeurIPS 2010): ``lambda_r = lambda0 * growth**r`` (``lambda0 > 0``,
        ``growth > 1``) and exactly the examples with ``difficulty < lambda_r`` are admitted.

    ``min_admitted`` (both modes) admits at least that many of the easiest examples (capped at the pool
    size; ties again by index). A selection method with a budget of ``B`` examples needs ``B`` candidates
    to choose from: when the pace admits fewer than the budget (early rounds, or a ``lambda0`` below most
    difficulties), the round would otherwise train on fewer examples than the compute budget pays for, or
    on none at all. Setting ``min_admitted = B`` keeps the pace's easy-first order while always offering
    the budget.

    The schedule holds configuration only (the round is an argument), so :meth:`state_dict` is a dict of
    plain types and :meth:`from_state` rebuilds it.
    """

    mode: Literal["quantile", "lambda"] = "quantile"
    start: float = 0.2
    step: float = 0.2
    lambda0: float | None = None
    growth: float | None = None
    min_admitted: int = 0

    def __post_init__(self) -> None:
        if self.mode not in PACE_MODES:
            raise ValueError(f"unknown pace mode {self.mode!r}: expected one of {', '.join(PACE_MODES)}")
        if isinstance(self.min_admitted, bool) or not isinstance(self.min_admitted, (int, np.integer)):
            raise ValueError(f"min_admitted must be an integer >= 0, got {self.min_admitted!r}")
        if self.min_admitted < 0:
            raise ValueError(f"min_admitted must be an integer >= 0, got {self.min_admitted!r}")
        self.min_admitted = int(self.min_admitted)
        if self.mode == "quantile":
            if not _is_real(self.start) or not 0 < self.start <= 1:
                raise ValueError(f"start must be a fraction in (0, 1] in quantile mode, got {self.start!r}")
            if not _is_real(self.step) or not 0 <= self.step <= 1:
                raise ValueError(f"step must be a fraction in [0, 1] in quantile mode, got {self.step!r}")
            self.start, self.step = float(self.start), float(self.step)
        else:
            if not _is_real(self.lambda0) or not 0 < self.lambda0 < math.inf:
                raise ValueError(f"lambda0 must be a finite number > 0 in lambda mode, got {self.lambda0!r}")
            if not _is_real(self.growth) or not 1 < self.growth < math.inf:
                raise ValueError(f"growth must be a finite number > 1 in lambda mode, got {self.growth!r}")
            self.lambda0, self.growth = float(self.lambda0), float(self.growth)

    # -- schedule values that do not depend on the data ------------------------------------------------

    def fraction(self, round: int) -> float:
        """Quantile mode: the fraction of the pool admitted in ``round``, ``min(1, start + step*round)``
        (before ``min_admitted``). Lambda mode has no data-free fraction: use ``admitted(...).mean()``."""
        round = _check_round(round)
        if self.mode != "quantile":
            raise ValueError(
                "fraction(round) is defined in quantile mode only; "
                "in lambda mode use admitted(difficulty, round).mean()"
            )
        return min(1.0, round_fraction(self.start + self.step * round))

    def lambda_at(self, round: int) -> float:
        """Lambda mode: ``lambda_r = lambda0 * growth**round`` (before ``min_admitted``)."""
        round = _check_round(round)
        if self.mode != "lambda":
            raise ValueError(
                "lambda_at(round) is defined in lambda mode only; in quantile mode use lam(difficulty, round)"
            )
        assert self.lambda0 is not None and self.growth is not None
        try:
            return self.lambda0 * self.growth**round
        except OverflowError:  # so many rounds that lambda exceeds every float: everything is admitted
            return math.inf

    # -- per-round decisions -----------------------------------------------------------------------------

    def admitted(self, difficulty: np.ndarray, round: int) -> np.ndarray:
        """Boolean mask of the examples admitted in ``round`` (same length as ``difficulty``)."""
        values, count = self._count(difficulty, round)
        mask = np.zeros(values.shape[0], dtype=bool)
        if count is None:
            mask[:] = values < self.lambda_at(round)
        else:
            mask[np.argsort(values, kind="stable")[:count]] = True
        return mask

    def threshold(self, difficulty: np.ndarray, round: int) -> float:
        """The round's difficulty cut-off: every admitted example has difficulty <= threshold and every
        rejected one has difficulty >= threshold.

        Quantile mode: the difficulty of the ``k``-th easiest example (the quantile value); the admitted
        set is ``{l < threshold}`` plus as many ``l == threshold`` as needed, lowest index first.
        Lambda mode: ``lambda_r`` (admitted = ``{l < lambda_r}``); when ``min_admitted`` raises the count,
        the difficulty of the ``min_admitted``-th easiest example, with ties as in quantile mode.
        ``-inf`` for an empty ``difficulty``.
        """
        values, count = self._count(difficulty, round)
        if count is None:
            return self.lambda_at(round)
        if count == 0:
            return -math.inf
        return float(np.partition(values, count - 1)[count - 1])

    def lam(self, difficulty: np.ndarray, round: int) -> float:
        """The self-paced age parameter ``lambda`` of ``round``, as used by :meth:`soft_weights`.

        Lambda mode: ``lambda_r``. Quantile mode (or when ``min_admitted`` raises the count): the smallest
        float above the quantile value :meth:`threshold`, so that the SPL rule ``l < lambda`` admits the
        quantile value itself and the hard weights ``1[l < lambda]`` agree with :meth:`admitted` (up to ties
        at the threshold, which :meth:`soft_weights` cuts by index).
        """
        values, count = self._count(difficulty, round)
        if count is None:
            return self.lambda_at(round)
        return float(np.nextafter(self.threshold(values, round), math.inf))

    def soft_weights(self, difficulty: np.ndarray, round: int, kind: str = "hard") -> np.ndarray:
        """Self-paced weights of ``round``: :func:`spl_weights` at :meth:`lam`, zero outside :meth:`admitted`.

        ``kind="hard"`` returns exactly ``admitted(...).astype(float)``. For ``linear`` and ``log`` the
        support is the admitted set and the weights fall from 1 (easiest, ``l <= 0``) towards 0 at the
        threshold, as the regularisers of Jiang et al. (ACM MM 2014) prescribe: in quantile mode the
        hardest admitted example (difficulty == threshold) gets a weight of the order of 1e-16, positive but
        negligible. The ``log`` kind needs
        ``0 < lambda < 1`` (difficulties such as ``1 - score``); ``linear`` needs ``lambda > 0``.
        """
        if kind not in SPL_KINDS:
            raise ValueError(
                f"unknown self-paced regulariser kind {kind!r}: expected one of {', '.join(SPL_KINDS)}"
            )
        mask = self.admitted(difficulty, round)
        if kind == "hard" or not mask.any():
            return mask.astype(np.float64)
        lam = self.lam(difficulty, round)
        if kind == "log" and lam > 1.0 and self.threshold(difficulty, round) <= 1.0:
            # the quantile reached difficulty 1 (e.g. a score of 0): lambda stays just inside log's domain
            lam = float(np.nextafter(1.0, 0.0))
        weights = spl_weights(difficulty, lam, kind)
        weights[~mask] = 0.0
        return weights

    # -- checkpointing -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The configuration as a dict of plain Python types (JSON- and checkpoint-safe)."""
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SelfPacedSchedule:
        """Rebuild a schedule from :meth:`state_dict` (unknown keys are an error)."""
        unknown = sorted(set(state) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(
                f"unknown SelfPacedSchedule state key(s) {', '.join(unknown)}: "
                f"expected {', '.join(cls.__dataclass_fields__)}"
            )
        return cls(**state)

    # -- internals ---------------------------------------------------------------------------------------

    def _count(self, difficulty: np.ndarray, round: int) -> tuple[np.ndarray, int | None]:
        """Validated difficulties and the exact admitted count, or None when the plain lambda rule
        ``l < lambda_r`` applies (lambda mode with ``min_admitted`` satisfied)."""
        round = _check_round(round)
        values = _as_difficulty(difficulty, one_dimensional=True)
        n = values.shape[0]
        floor = min(self.min_admitted, n)
        if self.mode == "quantile":
            fraction = self.fraction(round)
            count = min(n, math.ceil(round_fraction(fraction * n)))
            return values, max(count, floor)
        if int((values < self.lambda_at(round)).sum()) >= floor:
            return values, None
        return values, floor


def round_fraction(x: float) -> float:
    """``x`` rounded to 12 decimals: removes float noise such as 0.6000000000000001 before a ceil."""
    return round(float(x), _FRACTION_DECIMALS)


def _is_real(x: Any) -> bool:
    return (
        isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and not math.isnan(x)
    )


def _check_round(round: Any) -> int:
    if isinstance(round, bool) or not isinstance(round, (int, np.integer)) or round < 0:
        raise ValueError(f"round must be an integer >= 0 (0-based), got {round!r}")
    return int(round)


__all__ = ["PACE_MODES", "SPL_KINDS", "SelfPacedSchedule", "spl_objective", "spl_weights"]
