import pytest

from p3bench.errors import ConfigError
from p3bench.methods.budget import resolve_budget


@pytest.mark.parametrize(
    ("budget", "pool", "expected"),
    [(0.3, 1000, 300), (1.0, 7, 7), (0.0001, 100, 1), (1, 100, 1), (100, 100, 100), (0.5, 3, 2)],
)
def test_budget_sizes(budget, pool, expected):
    assert resolve_budget(budget, pool) == expected


@pytest.mark.parametrize(
    ("budget", "fragment"),
    [
        (0.0, "out of range"),
        (-0.2, "out of range"),
        (1.5, "out of range"),
        (0, "out of range"),
        (-3, "out of range"),
        (101, "exceeds the pool size 100"),
        ("half", "not a number"),
        (True, "not a number"),
        (float("nan"), "out of range"),
    ],
)
def test_bad_budgets_name_the_value(budget, fragment):
    with pytest.raises(ConfigError) as info:
        resolve_budget(budget, 100)
    assert fragment in str(info.value) and "\n" not in str(info.value)
