"""Output comparison as the APPS evaluation does it (Hendrycks et al., 2021, arXiv 2105.09938).

Standard-input problems (:func:`stdout_matches`), the first rule that accepts wins:

1. exact, after normalising line endings and stripping leading and trailing whitespace;
2. line by line, each line stripped and blank lines dropped;
3. whitespace-separated tokens equal;
4. tokens equal one by one, or numerically: where the expected token is an integer, the output token must
   have exactly its value (``7``, ``007``, ``7.0``; so ``10000000001`` never matches ``10000000000`` and
   ``1e-9`` does not match ``0``); where it is a decimal (``0.5``, ``1e-3``), close (``|a - b| <= 1e-8 +
   1e-5 * |b|``, numpy's ``allclose`` defaults, which APPS uses).

Stricter than the APPS code: integers are exact (APPS applies the float tolerance to them too), and token
order always matters (its last fallback compares sets of character sets per token, which accepts wrong
answers: ``12 21`` for ``21 12``, ``13`` for ``31``). A comparison that cannot be made (an integer too long
for ``int()``, a value too large for a float) is no match, never an error.

Call-based problems (:func:`call_result_matches`): the return value (tuples as lists, as APPS) equals the
expected value, or the expected value's single element when that is a one-element list (APPS wraps outputs
in a list); where the expected value is a float, the tolerance applies, recursively inside lists and
dicts; integers must be equal, and bools are not numbers (``True`` does not match ``1``).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

RTOL = 1e-5
ATOL = 1e-8
_INTEGER = re.compile(r"[+-]?\d+")
_DECIMAL = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")


def _as_text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return str(value)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def tokens_close(actual: str, expected: str) -> bool:
    """One token pair: equal strings; for an integer ``expected``, the same value exactly; for a decimal
    ``expected``, numerically close. Never raises (a comparison that cannot be made is no match)."""
    if actual == expected:
        return True
    if not (_DECIMAL.fullmatch(actual) and _DECIMAL.fullmatch(expected)):
        return False
    try:
        if _INTEGER.fullmatch(expected):
            # exact, and without int(): no limit on the number of digits
            return Decimal(actual) == Decimal(expected)
        a, b = float(actual), float(expected)
        return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= ATOL + RTOL * abs(b)
    except (ValueError, OverflowError, ArithmeticError, InvalidOperation):
        return False


def stdout_matches(actual: str, expected: str | list) -> bool:
    """Whether a standard-input program's output ``actual`` is accepted for ``expected`` (see module)."""
    expected_text = _as_text(expected).replace("\r\n", "\n")
    actual_text = actual.replace("\r\n", "\n")
    if actual_text.strip() == expected_text.strip():
        return True
    if _lines(actual_text) == _lines(expected_text):
        return True
    actual_tokens, expected_tokens = actual_text.split(), expected_text.split()
    if len(actual_tokens) != len(expected_tokens):
        return False
    return all(tokens_close(a, e) for a, e in zip(actual_tokens, expected_tokens, strict=True))


def values_close(actual: Any, expected: Any) -> bool:
    """Deep equality in which a float ``expected`` allows the APPS tolerance; integers compare exactly and
    bools are not numbers. Never raises (a comparison that cannot be made is no match)."""
    try:
        return _values_close(actual, expected)
    except (ValueError, OverflowError, ArithmeticError, RecursionError, TypeError):
        return False


def _values_close(actual: Any, expected: Any) -> bool:
    if isinstance(actual, bool) or isinstance(expected, bool):
        return type(actual) is type(expected) and actual == expected
    if isinstance(actual, (int, float)) and isinstance(expected, (int, float)):
        if isinstance(expected, int):
            return actual == expected  # exact, also for a float actual (int == float compares exactly)
        if isinstance(actual, int):
            actual = float(actual)  # OverflowError past the float range: no match
        return (
            math.isfinite(actual)
            and math.isfinite(expected)
            and abs(actual - expected) <= ATOL + RTOL * abs(expected)
        )
    if isinstance(actual, list) and isinstance(expected, list):
        return len(actual) == len(expected) and all(
            _values_close(a, e) for a, e in zip(actual, expected, strict=True)
        )
    if isinstance(actual, dict) and isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(_values_close(actual[k], expected[k]) for k in actual)
    return actual == expected


def call_result_matches(actual: Any, expected: Any) -> bool:
    """Whether a call-based program's return value ``actual`` (decoded from JSON) is accepted."""
    if values_close(actual, expected):
        return True
    return isinstance(expected, list) and len(expected) == 1 and values_close(actual, expected[0])
