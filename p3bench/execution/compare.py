"""Output comparison as the APPS evaluation does it (Hendrycks et al., 2021, arXiv 2105.09938).

Standard-input problems (:func:`stdout_matches`), the first rule that accepts wins:

1. exact, after normalising line endings and stripping leading and trailing whitespace;
2. line by line, each line stripped and blank lines dropped;
3. whitespace-separated tokens equal;
4. tokens equal one by one, or numerically close (``|a - b| <= 1e-8 + 1e-5 * |b|``, numpy's ``allclose``
   defaults, which APPS uses) where at least one of the two is a decimal (``0.5``, ``1e-3``); integers must
   be equal as integers (so ``10000000001`` never matches ``10000000000``).

Unlike the APPS code, token order always matters: its last fallback compares sets of character sets per
token, which accepts wrong answers (``12 21`` for ``21 12``, ``13`` for ``31``).

Call-based problems (:func:`call_result_matches`): the return value (tuples as lists, as APPS) equals the
expected value, or the expected value's single element when that is a one-element list (APPS wraps outputs
in a list); floats compare with the same tolerance, recursively inside lists and dicts.
"""

from __future__ import annotations

import math
import re
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
    """One token pair: equal strings, equal integers, or (one being a decimal) numerically close."""
    if actual == expected:
        return True
    if not (_DECIMAL.fullmatch(actual) and _DECIMAL.fullmatch(expected)):
        return False
    if _INTEGER.fullmatch(actual) and _INTEGER.fullmatch(expected):
        return int(actual) == int(expected)
    a, b = float(actual), float(expected)
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= ATOL + RTOL * abs(b)


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
    """Deep equality in which floats compare with the APPS tolerance (bools are not numbers here)."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        return actual == expected
    if isinstance(actual, (int, float)) and isinstance(expected, (int, float)):
        if isinstance(actual, int) and isinstance(expected, int):
            return actual == expected
        return (
            math.isfinite(actual)
            and math.isfinite(expected)
            and abs(actual - expected) <= ATOL + RTOL * abs(expected)
        )
    if isinstance(actual, list) and isinstance(expected, list):
        return len(actual) == len(expected) and all(
            values_close(a, e) for a, e in zip(actual, expected, strict=True)
        )
    if isinstance(actual, dict) and isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(values_close(actual[k], expected[k]) for k in actual)
    return actual == expected


def call_result_matches(actual: Any, expected: Any) -> bool:
    """Whether a call-based program's return value ``actual`` (decoded from JSON) is accepted."""
    if actual == expected or values_close(actual, expected):
        return True
    if isinstance(expected, list) and len(expected) == 1:
        return actual == expected[0] or values_close(actual, expected[0])
    return False
