"""Answer extraction (boxed, GSM8K) and checking (math-verify equivalence, numbers), and the evaluators."""

from __future__ import annotations

import threading

import pytest

from p3bench.data.example import Example
from p3bench.errors import ConfigError
from p3bench.eval.answers import (
    EVALUATORS,
    extract_last_number,
    gsm8k_answer,
    last_boxed,
    math_answers_equal,
    normalize_answer,
    numbers_equal,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so $x = \\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("\\boxed{\\left\\{ 1, 2 \\right\\}}", "\\left\\{ 1, 2 \\right\\}"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("\\boxed{a^{2^{3}}+\\sqrt{\\frac{1}{x}}}", "a^{2^{3}}+\\sqrt{\\frac{1}{x}}"),
        ("first \\boxed{3}, then \\boxed{5}.", "5"),
        ("\\boxed{\\boxed{7}}", "7"),
        ("$\\boxed 2$.", "2"),
        ("the answer is \\boxed 9.", "9"),
        ("\\fbox{42}", "42"),
        ("\\boxed {12}", "12"),
        ("\\boxed{ 8 }", "8"),
        ("no box here: 12", None),
        ("", None),
        (None, None),
        ("\\boxed{}", None),
        ("\\boxed{\\frac{1}{2}", None),  # unclosed (truncated generation)
        ("\\boxed{1} and then \\boxed{2", None),  # the last box is unclosed: no fallback to the first
        ("\\boxedx{1}", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She sold 48+24 = 72 clips.\n#### 72", "72"),
        ("...\n#### 1,080", "1080"),
        ("#### -3", "-3"),
        ("#### $5.", "5"),
        ("#### 2.50\nextra text 7", "2.50"),
        ("a #### 1\nb #### 2", "2"),
        ("no marker 12", None),
        ("#### none", None),
        (None, None),
    ],
)
def test_gsm8k_answer(text, expected):
    assert gsm8k_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("It costs $1,200 in total, so 1,200.", "1200"),
        ("3 apples and 4.5 pears", "4.5"),
        ("down to -7 degrees", "-7"),
        ("12,34", "34"),
        ("nothing", None),
    ],
)
def test_extract_last_number(text, expected):
    assert extract_last_number(text) == expected


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("72", "72", True),
        ("1,080", "1080", True),
        ("$1,080.", "1080", True),
        ("72.0", "72", True),
        ("3/4", "0.75", True),
        (72, "72", True),
        ("72.0000001", "72", True),
        ("73", "72", False),
        ("0.001", "0", False),
        (None, "72", False),
        ("seventy", "72", False),
        ("", "72", False),
    ],
)
def test_numbers_equal(pred, gold, expected):
    assert numbers_equal(pred, gold) is expected


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("0.5", "\\frac{1}{2}"),
        ("\\dfrac12", "\\frac{1}{2}"),
        ("\\tfrac{1}{2}", "\\frac12"),
        ("\\sqrt{8}", "2\\sqrt{2}"),
        ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}"),
        ("(1,2]", "(1, 2]"),
        ("(-\\infty,3]", "(-\\infty, 3]"),
        ("[-1,3)", "\\left[ -1, 3 \\right)"),
        ("1+x^2", "x^2+1"),
        ("\\{2,1\\}", "\\{1,2\\}"),
        ("10", "10\\%"),
        ("5", "\\$5"),
        ("\\pi/2", "\\frac{\\pi}{2}"),
        ("\\text{(A)}", "\\text{(A)}"),
        ("8+4i", "8+4i"),
        ("-5/3", "-\\frac{5}{3}."),  # MATH habits: a trailing period, \! thousands separators
        ("10000", "10,\\!000"),
        ("0.12345", "\\dfrac{2469}{20,\\!000}"),
    ],
)
def test_math_equivalences(pred, gold):
    assert math_answers_equal(pred, gold)


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("0.5", "\\frac{1}{3}"),
        ("\\sqrt{8}", "3\\sqrt{2}"),
        ("(1,2]", "[1,2]"),
        ("(1,2)", "[1,2]"),
        ("x^2-1", "x^2+1"),
        ("6", "5"),
        (None, "5"),
        ("", "5"),
        ("5", None),
        ("\\frac{1}{", "\\frac{1}{2}"),  # unparseable prediction
        ("(1,2)", "(1,\\!3)"),
    ],
)
def test_math_non_equivalences(pred, gold):
    assert not math_answers_equal(pred, gold)


def test_fast_path_normalisation():
    assert normalize_answer(" \\dfrac{1}{2}. ") == "\\frac{1}{2}"
    assert normalize_answer("\\left( 1, 2 \\right)") == "(1,2)"
    assert math_answers_equal("\\left(1,\\!2\\right)", "(1, 2)", fast_path=True)
    assert math_answers_equal("\\frac{1}{2}", "0.5", fast_path=False)


def test_math_answers_equal_outside_the_main_thread():
    results = {}

    def work():
        results["equal"] = math_answers_equal("\\sqrt{8}", "2\\sqrt{2}")
        results["different"] = math_answers_equal("\\sqrt{8}", "3\\sqrt{2}")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert results == {"equal": True, "different": False}


def example(answer: str | None) -> Example:
    return Example(id="x", prompt="q\n", target="t", answer=answer)


def test_evaluators():
    assert set(EVALUATORS.names()) >= {"math", "gsm8k", "synthetic_math"}
    math_eval = EVALUATORS.get("math")
    assert math_eval("so the answer is $\\boxed{\\dfrac{1}{2}}$.", example("\\frac{1}{2}"))
    assert math_eval("so the answer is $\\boxed{0.5}$.", example("\\frac12"))
    assert not math_eval("so the answer is 0.5", example("\\frac12"))  # no box
    assert not math_eval("\\boxed{1}", example(None))

    gsm8k_eval = EVALUATORS.get("gsm8k")
    assert gsm8k_eval("48/2 = 24\n#### 1,080", example("1080"))
    assert gsm8k_eval("so she has 72 clips", example("72"))  # no ####: the last number
    assert not gsm8k_eval("#### 71\nand 72", example("72"))  # #### wins over later numbers
    assert not gsm8k_eval("no number", example("72"))

    synth_eval = EVALUATORS.get("synthetic_math")
    assert synth_eval("23 + 45 = 68\n68 - 7 = 61\nThe answer is \\boxed{61}.", example("61"))
    assert synth_eval("The answer is \\boxed{ 61 }.", example("61"))
    assert not synth_eval("The answer is \\boxed{62}.", example("61"))
    assert not synth_eval("The answer is 61.", example("61"))
    assert synth_eval("\\boxed{\\frac{122}{2}}", example("61"))  # non-integer text: the math checker

    with pytest.raises(ConfigError, match="did you mean 'gsm8k'"):
        EVALUATORS.get("gsm8")
