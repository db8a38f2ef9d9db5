"""Answer extraction and checking for the math tasks (MATH, GSM8K, the synthetic arithmetic set).

Extraction:

- :func:`last_boxed`: the content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed 5`` without
  braces), nested braces included: MATH's convention for the final answer.
- :func:`gsm8k_answer`: the number after ``####`` (GSM8K's convention); :func:`extract_last_number` is the
  fallback for model outputs without ``####``.

Checking:

- :func:`math_answers_equal`: normalised string equality, then symbolic equivalence through ``math_verify``
  (``\\frac{1}{2}`` = ``0.5``, ``2\\sqrt{2}`` = ``\\sqrt{8}``, intervals, sets, ...).
- :func:`numbers_equal`: numeric equality with a relative tolerance (GSM8K).

Evaluators: :data:`EVALUATORS` maps a dataset name to a callable ``(generated_text, example) -> bool``.
``generated_text`` is the model's continuation only (the text generated after ``example.prompt``), and the
gold answer is ``example.answer``. The ``perplexity`` evaluator of pre-training text (the ``lm`` task) and the
``instruction`` evaluator (``p3bench.eval.instruction``: responses scored against references) are the
exceptions: they mark how the test split is scored and check no generated text.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import signal
import threading
from collections.abc import Callable, Sequence
from fractions import Fraction

from p3bench.data.example import Example
from p3bench.errors import ConfigError
from p3bench.registry import Registry

logger = logging.getLogger(__name__)

#: Seconds math-verify may spend on one parse or one comparison. It uses ``signal.alarm``, which works only
#: in the main thread, so outside the main thread (and where there is no SIGALRM) timeouts are disabled.
MATH_VERIFY_TIMEOUT_S = 5

# ----------------------------------------------------------------------------------------------- extraction

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _braced_group(text: str, start: int) -> tuple[str, int] | None:
    """The content of the brace group opening at ``text[start] == "{"`` and the index after it.

    Escaped characters (``\\{``, ``\\}``, ``\\\\``) are skipped, so they never open or close a group. None when
    the group is not closed.
    """
    depth = 0
    i = start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None


def _last_box_opening(text: str) -> tuple[int, int] | None:
    """Where the last ``\\boxed``/``\\fbox`` command of ``text`` ends, and the first position after it that
    is not a space or tab; None without one."""
    matches = list(_BOX_COMMAND.finditer(text))
    if not matches:
        return None
    end = i = matches[-1].end()
    while i < len(text) and text[i] in " \t":
        i += 1
    return end, i


def last_box_content_span(text: str) -> tuple[int, int] | None:
    """The character span of the content of the last ``\\boxed{...}`` / ``\\fbox{...}`` in ``text`` (braces
    balanced, as :func:`last_boxed` reads it); None without one, without braces, or when it is not closed."""
    opening = _last_box_opening(text)
    if opening is None:
        return None
    i = opening[1]
    if i >= len(text) or text[i] != "{":
        return None
    group = _braced_group(text, i)
    return None if group is None else (i + 1, group[1] - 1)


def last_boxed(text: str | None) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``, braces balanced.

    ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``; ``\\boxed 5`` (no braces) gives ``5`` (the token up to
    the next space or ``$``, trailing ``.``/``,`` dropped). None when there is no box, or when the last one is
    not closed (a truncated generation): an earlier box is never used instead.
    """
    if not text:
        return None
    opening = _last_box_opening(text)
    if opening is None:
        return None
    command_end, i = opening
    if i < len(text) and text[i] == "{":
        group = _braced_group(text, i)
        return (group[0].strip() or None) if group is not None else None
    if i == command_end:  # "\boxed" directly followed by something other than a space or "{"
        return None
    token = re.match(r"[^\s$]+", text[i:])
    if token is None:
        return None
    content = token.group(0).rstrip(".,;")
    return content or None


# A number: with thousands separators (1,234,567.5), or plain (1234, 3.5, .5), optionally negative.
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+")


def extract_last_number(text: str | None) -> str | None:
    """The last number in ``text``, thousands separators removed (``"... costs $1,200."`` -> ``"1200"``).

    The fallback for GSM8K-style outputs that lack a ``#### N`` line (a truncated or differently formatted
    generation): the last number a solution mentions is usually its result. None when there is no number.
    """
    if not text:
        return None
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def gsm8k_answer(text: str | None) -> str | None:
    """The number after the last ``####`` (GSM8K's final-answer marker), commas removed; None without one.

    ``"...\\n#### 1,080"`` gives ``"1080"``; ``"#### $5."`` gives ``"5"``.
    """
    if not text or "####" not in text:
        return None
    tail = text.rsplit("####", 1)[1].strip().split("\n", 1)[0]
    match = _NUMBER.search(tail)
    return match.group(0).replace(",", "") if match else None


# ------------------------------------------------------------------------------------------------- checking


def _to_number(value: object) -> float | None:
    """A float from ``3``, ``"1,000"``, ``"$5"``, ``"7."``, ``"3/4"``, ``"-2.5"``; None when not a number."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        return None


def numbers_equal(pred: object, gold: object, rel_tol: float = 1e-6) -> bool:
    """True when ``pred`` and ``gold`` are the same number (within ``rel_tol``; ``1e-9`` absolute near zero).

    Strings may carry thousands separators, a ``$`` sign and a trailing ``.``; simple fractions (``3/4``) are
    read as numbers. Anything that is not a number (including None) is not equal to anything.
    """
    a, b = _to_number(pred), _to_number(gold)
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return False
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-9)


_SPACING = re.compile(r"\\[,;:! ]|\\left|\\right|\s+")


def normalize_answer(answer: str) -> str:
    """A light, safe normalisation for the string fast path: no spaces or spacing commands, no ``\\left`` /
    ``\\right``, ``\\dfrac``/``\\tfrac`` as ``\\frac``, no surrounding ``$``, no trailing period."""
    text = answer.strip().strip("$")
    text = _SPACING.sub("", text)
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return text.rstrip(".")


def _timeout_s() -> int | None:
    """math-verify's timeout here: signal alarms work only in the main thread of a process with SIGALRM."""
    if hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread():
        return MATH_VERIFY_TIMEOUT_S
    return None


def _math_verify():
    # Imported on first use: it pulls in sympy and its LaTeX grammar (about a second).
    import math_verify
    from math_verify.errors import TimeoutException

    return math_verify, TimeoutException


_THOUSANDS = re.compile(r"(?<=\d),\\!(?=\d{3}(?!\d))")


def _clean_for_parse(answer: str) -> str:
    """MATH habits math-verify does not read: ``29,\\!322`` thousands separators, ``\\!`` spacing, and a
    trailing ``.`` or ``,`` after the answer (``-\\frac{5}{3}.``)."""
    text = _THOUSANDS.sub("", answer).replace("\\!", "")
    return text.strip().rstrip(".,").strip()


@functools.lru_cache(maxsize=65536)
def _parse(answer: str, timeout_s: int | None) -> tuple:
    """math-verify's parse of one bare answer, cleaned and wrapped in ``$...$`` as its LaTeX extractor expects."""
    math_verify, timeout_exception = _math_verify()
    try:
        return tuple(math_verify.parse(f"${_clean_for_parse(answer)}$", parsing_timeout=timeout_s))
    except (Exception, timeout_exception):  # its TimeoutException is a BaseException
        logger.debug("math-verify could not parse %r", answer, exc_info=True)
        return ()


def math_answers_equal(pred: str | None, gold: str | None, *, fast_path: bool = True) -> bool:
    """True when ``pred`` is mathematically the same answer as ``gold`` (both bare answers, e.g. the content
    of a ``\\boxed{}``, not whole solutions).

    First normalised string equality (:func:`normalize_answer`; ``fast_path=False`` skips it, to measure the
    symbolic path alone), then ``math_verify.verify`` on both answers parsed as LaTeX. Any math-verify error
    or timeout counts as not equal. Thread safe: outside the main thread math-verify runs without its
    signal-based timeouts (:data:`MATH_VERIFY_TIMEOUT_S` applies in the main thread).
    """
    if pred is None or gold is None:
        return False
    pred, gold = str(pred), str(gold)
    if not pred.strip() or not gold.strip():
        return False
    if fast_path and normalize_answer(pred) == normalize_answer(gold):
        return True
    timeout_s = _timeout_s()
    gold_parsed, pred_parsed = _parse(gold, timeout_s), _parse(pred, timeout_s)
    if not gold_parsed or not pred_parsed:
        return False
    math_verify, timeout_exception = _math_verify()
    try:
        return bool(math_verify.verify(list(gold_parsed), list(pred_parsed), timeout_seconds=timeout_s))
    except (Exception, timeout_exception):
        logger.debug("math-verify failed comparing %r with %r", pred, gold, exc_info=True)
        return False


# ----------------------------------------------------------------------------------------------- evaluators

Evaluator = Callable[[str, Example], bool]

#: Dataset name -> ``(generated_text, example) -> bool``. ``generated_text`` is the model's continuation of
#: ``example.prompt`` (not prompt + continuation); the gold answer is ``example.answer``.
EVALUATORS: Registry[Evaluator] = Registry("evaluator")
EVALUATORS.register_lazy("apps", "p3bench.execution.apps:evaluate_apps")
# instruction responses are scored against their references in the test step, not checked
EVALUATORS.register_lazy("instruction", "p3bench.eval.instruction:evaluate_instruction")


@EVALUATORS.register("math")
def evaluate_math(generated_text: str, example: Example) -> bool:
    """MATH: the last ``\\boxed{}`` of the generation, checked against ``example.answer`` by
    :func:`math_answers_equal`."""
    return math_answers_equal(last_boxed(generated_text), example.answer)


@EVALUATORS.register("gsm8k")
def evaluate_gsm8k(generated_text: str, example: Example) -> bool:
    """GSM8K: the ``#### N`` number of the generation (else its last number), compared numerically."""
    pred = gsm8k_answer(generated_text)
    if pred is None:
        pred = extract_last_number(generated_text)
    return numbers_equal(pred, example.answer)


_INTEGER = re.compile(r"-?\d+")


@EVALUATORS.register("synthetic_math")
def evaluate_synthetic_math(generated_text: str, example: Example) -> bool:
    """Synthetic arithmetic: the last ``\\boxed{}`` as an exact integer; non-integers go to the MATH checker."""
    pred, gold = last_boxed(generated_text), example.answer
    if pred is None or gold is None:
        return False
    pred_clean, gold_clean = pred.strip().replace(",", ""), gold.strip().replace(",", "")
    if _INTEGER.fullmatch(pred_clean) and _INTEGER.fullmatch(gold_clean):
        return int(pred_clean) == int(gold_clean)
    return math_answers_equal(pred, gold)


@EVALUATORS.register("perplexity")
def evaluate_perplexity(generated_text: str, example: Example) -> bool:
    """The ``lm`` task's evaluator (pre-training text; held-out perplexity as in arXiv 2402.09668).

    Test documents are scored by teacher forcing in the training module (``test/perplexity``); nothing is
    generated. It is marked ``teacher_forced`` and raises when called, so that a path that would generate
    and check answers for an lm dataset (a pass-rate scorer, a qa test step) stops with one line instead.
    """
    raise ConfigError(
        f"example {example.id!r} is pre-training text scored by perplexity, not by checking generated answers: "
        "expected a teacher-forced scorer (e.g. likelihood) for an lm dataset, not one that generates"
    )


evaluate_perplexity.teacher_forced = True  # type: ignore[attr-defined]


def check_all(evaluator: Evaluator, pairs: Sequence[tuple[str, Example]]) -> list[bool]:
    """Verdicts for many ``(generated_text, example)`` pairs: through ``evaluator.batch`` when the evaluator
    offers one (the APPS evaluator checks programs on a pool of sandbox workers), else one at a time."""
    batch = getattr(evaluator, "batch", None)
    if batch is not None:
        return [bool(v) for v in batch(list(pairs))]
    return [bool(evaluator(text, example)) for text, example in pairs]
