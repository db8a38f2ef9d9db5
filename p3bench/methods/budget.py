"""Selection budgets: a fraction of the pool (float in (0, 1]) or a count (int >= 1)."""

from __future__ import annotations

import math

from p3bench.errors import ConfigError


def resolve_budget(budget: float | int, pool_size: int) -> int:
    """Number of examples a budget allows from a pool of ``pool_size``.

    A float is a fraction in (0, 1] (rounded, at least one example); an int is a count in [1, pool_size].
    ``budget=1`` is therefore one example and ``budget=1.0`` the whole pool.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise ConfigError(f"budget={budget!r} is not a number: expected a fraction in (0, 1] or a count >= 1")
    if isinstance(budget, float):
        if not math.isfinite(budget) or budget <= 0 or budget > 1:
            raise ConfigError(
                f"budget={budget} is out of range: expected a fraction in (0, 1] or an integer count"
            )
        return max(1, round(budget * pool_size))
    if budget < 1:
        raise ConfigError(f"budget={budget} is out of range: expected a count >= 1 or a fraction in (0, 1]")
    if budget > pool_size:
        raise ConfigError(
            f"budget={budget} exceeds the pool size {pool_size}: expected a count <= {pool_size}"
        )
    return int(budget)
