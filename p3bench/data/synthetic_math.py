"""The embedded default dataset: seeded, graded arithmetic with planted label noise, near-duplicates and junk.

Everything is generated offline from the arguments; the same arguments give identical examples. Problems
come in the difficulty levels of :data:`LEVELS` (edit that table to recalibrate) and five types:
``addition``, ``subtraction``, ``multiplication`` (a single product), ``mixed`` (several kinds of operation)
and ``word`` (a one-sentence story). Solutions compute one operation a line, products first, then left to
right, and end with the answer in ``\\boxed{}`` like MATH::

    prompt: "Compute 23 + 4 * 12 - 7.\\n"
    target: "4 * 12 = 48\\n23 + 48 = 71\\n71 - 7 = 64\\nThe answer is \\\\boxed{64}."

Every intermediate result is a non-negative integer. ``prompt`` ends with a newline so the target starts on
a fresh line; ``answer`` is the boxed answer as written in the target.

Planted defects, in the train pool only, exact in count (``round(rate * n_train)`` each, disjoint):

- label noise (``meta["is_noisy"]``): the last step's result and the boxed answer are replaced by a wrong
  number (``noise_kind="last_step"``), or only the boxed answer is (``noise_kind="answer"``: a right worked
  solution under a wrong final-answer label); ``answer`` holds that wrong number and ``meta["clean_answer"]``
  the right one.
- near-duplicates (``meta["dup_group"]``): extra copies (1 to 3 a group) of a clean example with a small
  surface change (spacing, punctuation, capitalisation, or the instruction reworded), same numbers and
  target. Every member of a group, the original included, has the group's id; ``meta["is_duplicate"]`` is
  True for the copies only. The ``duplicate_rate`` counts the copies. Other examples have ``dup_group=None``.
- junk (``meta["is_junk"]``): random characters, shuffled problem words or lorem-like filler as prompt and
  target, no answer (``answer=None``). Junk carries a level and a type label like any other example (drawn
  from a hash of its text), so that no label a method may read gives it away.

Every example's ``meta`` holds ``level``, ``type``, ``is_noisy``, ``is_junk``, ``dup_group``, ``is_duplicate``
and ``clean_answer``; all but ``level`` and ``type`` are oracle fields for reports, never for methods.

Validation and test are clean and balanced over levels (``n // n_levels`` a level, the remainder to the
lowest levels; listed level by level in turn, so any prefix is balanced too). No problem appears twice in
the whole dataset: problems are identified by their expression (numbers and operators in order, for word
problems too), so no test problem is in train or validation, and the only repeats in train are the planted
near-duplicates. Each split draws from its own random stream, so the test set does not change with
``n_train`` or the defect rates.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass

from p3bench.data.example import DatasetSplits, Example
from p3bench.errors import ConfigError

logger = logging.getLogger(__name__)

#: Bump when the generator's output changes for the same arguments (recorded in ``DatasetSplits.info``).
# 2: junk examples carry a level and type label drawn from a hash of their text (1: level 0, type "junk")
GENERATOR_VERSION = 2


@dataclass(frozen=True)
class LevelSpec:
    """How the problems of one difficulty level are drawn.

    A number is drawn by choosing its digit count uniformly in the range's digit counts, then its value
    uniformly; a product ``a * b`` is one operation and one term of the sum.
    """

    n_ops: tuple[int, int]  # operations a problem (inclusive range)
    operand: tuple[int, int]  # numbers that are added or subtracted
    n_mul: tuple[int, int]  # products a mixed or word problem has (inclusive range)
    factor: tuple[int, int]  # the larger factor of a product
    multiplier: tuple[int, int]  # the smaller factor (the count of bags in word problems)
    types: tuple[str, ...]  # problem types, drawn uniformly
    carry: bool = True  # False: additions without carries and subtractions without borrows


# fmt: off
#: The difficulty levels (recalibrate here; bump GENERATOR_VERSION when you do):
#:
#: ====  ===  ============================  ========================  =============================================
#: lvl   ops  numbers added or subtracted   products                  types
#: ====  ===  ============================  ========================  =============================================
#: 1     1    1-99, no carry, no borrow     none                      addition, subtraction, word
#: 2     1    10-99                         a single 10-99 x 2-9      addition, subtraction, multiplication, word
#: 3     2    10-99                         none                      addition, subtraction, mixed (+ and -), word
#: 4     3    10-99                         exactly one 10-99 x 2-9   mixed, word
#: 5     3    10-999                        one or two 10-99 x 2-9    mixed, word
#: ====  ===  ============================  ========================  =============================================
#:
#: L1 is carry-free (rather than single-digit) so that it stays easy yet holds thousands of distinct problems.
LEVELS: dict[int, LevelSpec] = {
    #            ops     operand    products factor    multiplier types
    1: LevelSpec((1, 1), (1, 99),   (0, 0), (0, 0),   (0, 0), ("addition", "subtraction", "word"), carry=False),
    2: LevelSpec((1, 1), (10, 99),  (0, 1), (10, 99), (2, 9), ("addition", "subtraction", "multiplication", "word")),
    3: LevelSpec((2, 2), (10, 99),  (0, 0), (0, 0),   (0, 0), ("addition", "subtraction", "mixed", "word")),
    4: LevelSpec((3, 3), (10, 99),  (1, 1), (10, 99), (2, 9), ("mixed", "word")),
    5: LevelSpec((3, 3), (10, 999), (1, 2), (10, 99), (2, 9), ("mixed", "word")),
}
# fmt: on

#: Problems longer than this are redrawn (a tiny model trains on them on CPU).
MAX_PROMPT_CHARS = 70  # without the trailing newline; binds only word problems (expressions stay under 40)
MAX_TARGET_CHARS = 80

TEMPLATES = ("Compute {}.", "Calculate {}.", "What is {}?", "Evaluate {}.")
NAMES = ("Ana", "Bo", "Cy", "Dee", "Eli", "Fay", "Gus", "Ivy", "Max", "Sam", "Tom", "Zoe")
ITEMS = ("apples", "beads", "books", "cards", "coins", "eggs", "nuts", "pens", "shells", "stamps")
CONTAINERS = ("bags", "boxes", "packs", "jars")
GAINS = ("buys {}", "gets {}", "finds {}", "wins {}")
LOSSES = ("sells {}", "loses {}", "uses {}", "gives {} away")
_LOREM_TEXT = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et "
    "dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip ex ea"
)
LOREM = tuple(_LOREM_TEXT.split())
JUNK_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789+-*=.,;:!?#@%&()[] "

_MAX_TRIES = 2000  # draws without a new problem before a level counts as exhausted


@dataclass(frozen=True)
class _Problem:
    level: int
    type: str
    key: str  # the expression without spaces: identifies the problem across splits
    prompt: str  # without the trailing newline
    lines: tuple[str, ...]  # the solution steps, one operation a line
    answer: int
    expression: str | None  # the spaced expression of non-word problems (for rephrased duplicates)


def _randint(rng: random.Random, low: int, high: int) -> int:
    """Uniform in [low, high]; ``random.randint`` is several times slower and this runs a million times."""
    return low + int(rng.random() * (high - low + 1))


def _pick(rng: random.Random, options):
    return options[int(rng.random() * len(options))]


def _number(rng: random.Random, low: int, high: int) -> int:
    """A number in [low, high]: its digit count uniform first, then its value uniform."""
    digits = _randint(rng, len(str(low)), len(str(high)))
    return _randint(rng, max(low, 10 ** (digits - 1)), min(high, 10**digits - 1))


def _carry_free(a: int, b: int, op: str) -> bool:
    while a or b:
        if (op == "+" and a % 10 + b % 10 > 9) or (op == "-" and a % 10 < b % 10):
            return False
        a, b = a // 10, b // 10
    return True


def _draw(rng: random.Random, level: int, spec: LevelSpec, kind: str) -> _Problem | None:
    """One problem of the level and type, or None when the draw breaks a rule (carry, negative, too long).

    Products are computed first, then the sum left to right; a subtracted number is drawn no larger than the
    running total, so that every intermediate result is non-negative.
    """
    n_ops = _randint(rng, *spec.n_ops)
    if kind == "multiplication":
        n_mul, signs = 1, []
    elif kind in ("addition", "subtraction"):
        n_mul, signs = 0, ["+" if kind == "addition" else "-"] * n_ops
    else:
        n_mul = min(_randint(rng, *spec.n_mul), (n_ops + 1) // 2)
        signs = [_pick(rng, "+-") for _ in range(n_ops - n_mul)]
        if kind == "mixed" and n_mul == 0 and len(set(signs)) < 2:
            return None
    n_terms = len(signs) + 1
    product_at = set(rng.sample(range(n_terms), n_mul)) if n_mul else set()
    word = kind == "word"
    # A product is (count, factor) in word problems, either order in expressions; it is computed first.
    products: dict[int, tuple[int, int]] = {}
    for i in sorted(product_at):
        count, factor = _randint(rng, *spec.multiplier), _number(rng, *spec.factor)
        products[i] = (count, factor) if word or rng.random() < 0.5 else (factor, count)
    lines = [f"{a} * {b} = {a * b}" for a, b in products.values()]
    terms: list[int | tuple[int, int]] = []
    tokens: list[str] = []
    total = 0
    for i in range(n_terms):
        sign = signs[i - 1] if i else "+"
        if i in products:
            a, b = products[i]
            value = a * b
            terms.append((a, b))
            term_tokens = [str(a), "*", str(b)]
        else:
            high = spec.operand[1] if sign == "+" else min(spec.operand[1], total)
            if high < spec.operand[0]:
                return None
            value = _number(rng, spec.operand[0], high)
            terms.append(value)
            term_tokens = [str(value)]
        tokens += ([sign] if i else []) + term_tokens
        if i == 0:
            total = value
            continue
        if not spec.carry and not _carry_free(total, value, sign):
            return None
        result = total + value if sign == "+" else total - value
        if result < 0:
            return None
        lines.append(f"{total} {sign} {value} = {result}")
        total = result
    lines.append(f"The answer is \\boxed{{{total}}}.")
    expression = " ".join(tokens)
    prompt = _story(rng, terms, signs) if word else _pick(rng, TEMPLATES).format(expression)
    if len(prompt) > MAX_PROMPT_CHARS or len("\n".join(lines)) > MAX_TARGET_CHARS:
        return None
    return _Problem(level, kind, "".join(tokens), prompt, tuple(lines), total, None if word else expression)


def _story(rng: random.Random, terms: list, signs: list[str]) -> str:
    """A one-sentence word problem whose arithmetic is ``terms`` joined by ``signs``."""
    name, item, container = _pick(rng, NAMES), _pick(rng, ITEMS), _pick(rng, CONTAINERS)
    first = terms[0]
    start = f"{name} has {first[0]} {container} of {first[1]} {item}" if isinstance(first, tuple) else None
    start = start or f"{name} has {first} {item}"
    events = []
    for sign, term in zip(signs, terms[1:], strict=True):
        if isinstance(term, tuple):
            verb = "buys" if sign == "+" else "sells"
            events.append(f"{verb} {term[0]} {container} of {term[1]}")
        else:
            events.append(_pick(rng, GAINS if sign == "+" else LOSSES).format(term))
    if not events:
        return f"{start}. How many {item} in all?"
    if len(events) == 1:
        return f"{start} and {events[0]}. How many now?"
    return f"{start}, {', '.join(events[:-1])} and {events[-1]}. How many now?"


def _generate(rng: random.Random, level: int, used: set[str]) -> _Problem | None:
    """A problem of ``level`` whose expression is not in ``used`` (then added to it); None when the level
    seems exhausted (no new problem in ``_MAX_TRIES`` draws)."""
    spec = LEVELS[level]
    kind = _pick(rng, spec.types)
    for attempt in range(1, _MAX_TRIES + 1):
        if attempt % 100 == 0:  # this type may be exhausted: try another
            kind = _pick(rng, spec.types)
        problem = _draw(rng, level, spec, kind)
        if problem is not None and problem.key not in used:
            used.add(problem.key)
            return problem
    return None


def _exhausted(level: int, used: set[str]) -> ConfigError:
    return ConfigError(
        f"synthetic_math level {level} ran out of distinct problems ({len(used)} problems drawn in all): "
        "expected smaller n_val/n_test, or a wider LEVELS entry"
    )


def _train_problems(rng: random.Random, n: int, levels: list[int], used: set[str]) -> list[_Problem]:
    """``n`` distinct problems, levels in turn; a level that runs out of distinct problems (with the default
    table L1 does after about 4,400) leaves the rotation, with a warning, and the other levels fill the pool."""
    active = list(levels)
    problems: list[_Problem] = []
    turn = 0
    while len(problems) < n:
        if not active:
            raise ConfigError(
                f"synthetic_math n_train={n} is more distinct problems than levels {levels} hold: expected fewer"
            )
        level = active[turn % len(active)]
        problem = _generate(rng, level, used)
        if problem is None:
            logger.warning(
                "synthetic_math: level %d ran out of distinct problems after %d train examples; the rest of the "
                "train pool comes from levels %s",
                level,
                sum(p.level == level for p in problems),
                [other for other in active if other != level],
            )
            active.remove(level)
            continue
        problems.append(problem)
        turn += 1
    return problems


# --------------------------------------------------------------------------------------------- defects


def _wrong_answer(rng: random.Random, right: int) -> int:
    """A plausible wrong answer with as many digits as the right one: off by 1 to 10, or any such number."""
    digits = len(str(right))
    low, high = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
    while True:
        if rng.random() < 0.5:
            wrong = right + rng.choice((-1, 1)) * rng.randint(1, 10)
        else:
            wrong = rng.randint(low, high)
        if low <= wrong <= high and wrong != right:
            return wrong


#: how a noisy label is wrong: ``last_step``: the last step's result and the boxed answer (a worked solution
#: with one wrong computation, consistent with its answer); ``answer``: only the boxed answer (a right worked
#: solution under a wrong final-answer label)
NOISE_KINDS = ("last_step", "answer")


def _noisy_lines(lines: tuple[str, ...], wrong: int, kind: str = "last_step") -> tuple[str, ...]:
    answer_line = f"The answer is \\boxed{{{wrong}}}."
    if kind == "answer":
        return (*lines[:-1], answer_line)
    last_step = lines[-2].rsplit("= ", 1)[0] + f"= {wrong}"
    return (*lines[:-2], last_step, answer_line)


def _near_duplicate(rng: random.Random, problem: _Problem, taken: set[str]) -> str:
    """A prompt with the same numbers and a small surface change, different from every prompt in ``taken``."""
    edits = ["double space", "punctuation", "lowercase"]
    if problem.expression is not None:
        edits += ["rephrase", "compact"]
    for _ in range(100):
        text = problem.prompt
        for edit in rng.sample(edits, rng.randint(1, 2)):
            if edit == "rephrase":
                text = rng.choice([t for t in TEMPLATES if t.format(problem.expression) != text]).format(
                    problem.expression
                )
            elif edit == "compact":
                text = text.replace(" + ", "+").replace(" - ", "-").replace(" * ", "*")
            elif edit == "double space":
                spaces = [i for i, char in enumerate(text) if char == " "]
                at = rng.choice(spaces)
                text = text[:at] + " " + text[at:]
            elif edit == "punctuation":
                text = text[:-1] if text[-1] in ".?" and rng.random() < 0.5 else text[:-1] + " " + text[-1]
            else:
                text = text[0].lower() + text[1:]
        if text not in taken:
            return text
    raise AssertionError(f"no near-duplicate found for {problem.prompt!r}")  # pragma: no cover


def _junk(rng: random.Random, problems: list[_Problem]) -> tuple[str, str]:
    """A junk (prompt, target): random characters, a problem's words shuffled, or lorem-like filler."""

    def text(max_chars: int) -> str:
        kind = rng.randrange(3)
        if kind == 1 and not problems:
            kind = 2
        if kind == 0:
            out = "".join(_pick(rng, JUNK_CHARS) for _ in range(rng.randint(15, max_chars)))
        elif kind == 1:
            problem = _pick(rng, problems)
            words = [w for w in f"{problem.prompt} {' '.join(problem.lines)}".split() if "boxed" not in w]
            rng.shuffle(words)
            out = " ".join(words[: rng.randint(3, 14)])
        else:
            out = " ".join(_pick(rng, LOREM) for _ in range(rng.randint(3, 14)))
        return out[:max_chars].strip() or "lorem ipsum"

    return text(MAX_PROMPT_CHARS), text(MAX_TARGET_CHARS)


# ------------------------------------------------------------------------------------------------ loader


def _junk_label(prompt: str, levels: list[int], problems: list[_Problem]) -> tuple[int, str]:
    """The level and type label a junk example carries, as scraped junk carries whatever label its source
    had: drawn from a hash of its text (not from the generator's stream, so the pool is unchanged), so that
    neither field gives junk away to a method."""
    digest = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
    kinds = sorted({p.type for p in problems}) or ["arithmetic"]
    return levels[digest % len(levels)], kinds[(digest // len(levels)) % len(kinds)]


def _meta(level: int, kind: str, clean_answer: str | None, **oracle) -> dict:
    meta = {"level": level, "type": kind, "is_noisy": False, "is_junk": False, "dup_group": None}
    meta.update(is_duplicate=False, clean_answer=clean_answer)
    meta.update(oracle)
    return meta


def _clean_example(problem: _Problem, example_id: str) -> Example:
    answer = str(problem.answer)
    return Example(
        id=example_id,
        prompt=problem.prompt + "\n",
        target="\n".join(problem.lines),
        answer=answer,
        meta=_meta(problem.level, problem.type, answer),
    )


def _balanced(rng: random.Random, n: int, levels: list[int], used: set[str], split: str) -> list[Example]:
    """``n`` clean examples, levels in turn (L1, L2, ..., L1, ...), so that every prefix is balanced."""
    width = max(5, len(str(max(n - 1, 0))))
    examples = []
    for i in range(n):
        level = levels[i % len(levels)]
        problem = _generate(rng, level, used)
        if problem is None:
            raise _exhausted(level, used)
        examples.append(_clean_example(problem, f"synth-{split}-{i:0{width}d}"))
    return examples


def _check_args(n_train, n_val, n_test, rates: dict[str, float], levels) -> list[int]:
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"synthetic_math {name}={value!r} is invalid: expected an integer >= 0")
    for name, value in rates.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ConfigError(f"synthetic_math {name}={value!r} is invalid: expected a rate in [0, 1]")
    known = sorted(LEVELS)
    chosen = (
        list(range(1, levels + 1)) if isinstance(levels, int) and not isinstance(levels, bool) else levels
    )
    if (
        not isinstance(chosen, (list, tuple))
        or not chosen
        or any(level not in LEVELS for level in chosen)
        or len(set(chosen)) != len(chosen)
    ):
        raise ConfigError(
            f"synthetic_math levels={levels!r} is invalid: expected a count 1..{len(known)} or a list of "
            f"distinct levels from {known}"
        )
    return sorted(chosen)


def load_synthetic_math(
    n_train: int = 20000,
    n_val: int = 500,
    n_test: int = 1000,
    seed: int = 0,
    noise_rate: float = 0.1,
    duplicate_rate: float = 0.05,
    junk_rate: float = 0.05,
    levels: int | list[int] = 5,
    noise_kind: str = "last_step",
) -> DatasetSplits:
    """The synthetic arithmetic dataset (see the module docstring); ``levels`` is a count (levels 1..levels)
    or a list of levels. Defect counts are ``round(rate * n_train)``; the rest of train is clean.
    ``noise_kind`` (:data:`NOISE_KINDS`) says what a noisy label gets wrong; the same arguments otherwise give
    the same examples whatever the kind. The shipped config (``conf/dataset/synthetic_math.yaml``) sets
    ``answer``, the calibrated default testbed's; this function's default stays ``last_step``, the data of the
    recorded experiments and of the tests that build it directly."""
    if noise_kind not in NOISE_KINDS:
        raise ConfigError(
            f"synthetic_math noise_kind={noise_kind!r} is invalid: expected one of {', '.join(NOISE_KINDS)}"
        )
    level_list = _check_args(
        n_train,
        n_val,
        n_test,
        {"noise_rate": noise_rate, "duplicate_rate": duplicate_rate, "junk_rate": junk_rate},
        levels,
    )
    n_junk, n_dup, n_noisy = (round(rate * n_train) for rate in (junk_rate, duplicate_rate, noise_rate))
    n_base = n_train - n_junk - n_dup
    if n_base < 0 or n_noisy > n_base or (n_dup and n_base - n_noisy < 1):
        raise ConfigError(
            f"synthetic_math rates noise={noise_rate}, duplicate={duplicate_rate}, junk={junk_rate} ask for "
            f"{n_noisy} noisy + {n_dup} duplicates + {n_junk} junk examples out of n_train={n_train}: expected "
            "them to leave room for the clean examples they are made from"
        )

    used: set[str] = set()
    test = _balanced(random.Random(f"synthetic_math/{seed}/test"), n_test, level_list, used, "test")
    validation = _balanced(random.Random(f"synthetic_math/{seed}/val"), n_val, level_list, used, "val")

    rng = random.Random(f"synthetic_math/{seed}/train")
    base = _train_problems(rng, n_base, level_list, used)
    noisy = set(rng.sample(range(n_base), n_noisy))
    clean = [i for i in range(n_base) if i not in noisy]
    group_sizes: list[int] = []
    while sum(group_sizes) < n_dup:
        group_sizes.append(min(rng.randint(1, 3), n_dup - sum(group_sizes)))
    if len(group_sizes) > len(clean):
        raise ConfigError(
            f"synthetic_math duplicate_rate={duplicate_rate} needs {len(group_sizes)} clean originals but only "
            f"{len(clean)} are left: expected a lower duplicate_rate or noise_rate"
        )
    group_of = {index: group for group, index in enumerate(rng.sample(clean, len(group_sizes)))}

    # (prompt without newline, target, answer, meta) for every train example, ids given after the shuffle.
    rows: list[tuple[str, str, str | None, dict]] = []
    for i, problem in enumerate(base):
        right = str(problem.answer)
        if i in noisy:
            wrong = _wrong_answer(rng, problem.answer)
            lines, meta = (
                _noisy_lines(problem.lines, wrong, noise_kind),
                _meta(problem.level, problem.type, right, is_noisy=True),
            )
            rows.append((problem.prompt, "\n".join(lines), str(wrong), meta))
            continue
        meta = _meta(problem.level, problem.type, right, dup_group=group_of.get(i))
        rows.append((problem.prompt, "\n".join(problem.lines), right, meta))
    for i, group in sorted(group_of.items(), key=lambda item: item[1]):
        problem = base[i]
        taken = {problem.prompt}
        for _ in range(group_sizes[group]):
            prompt = _near_duplicate(rng, problem, taken)
            taken.add(prompt)
            meta = _meta(problem.level, problem.type, str(problem.answer), dup_group=group, is_duplicate=True)
            rows.append((prompt, "\n".join(problem.lines), str(problem.answer), meta))
    for _ in range(n_junk):
        prompt, target = _junk(rng, base)
        level, kind = _junk_label(prompt, level_list, base)
        rows.append((prompt, target, None, _meta(level, kind, None, is_junk=True)))
    rng.shuffle(rows)
    width = max(6, len(str(max(n_train - 1, 0))))
    train = [
        Example(
            id=f"synth-train-{i:0{width}d}", prompt=prompt + "\n", target=target, answer=answer, meta=meta
        )
        for i, (prompt, target, answer, meta) in enumerate(rows)
    ]

    info = {
        "source": "synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "levels": level_list,
        "n_noisy": n_noisy,
        "n_duplicates": n_dup,
        "n_dup_groups": len(group_sizes),
        "n_junk": n_junk,
    }
    return DatasetSplits(
        name="synthetic_math", task="qa", train=train, validation=validation, test=test, info=info
    )
