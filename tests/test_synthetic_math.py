"""The synthetic arithmetic dataset: determinism, correct arithmetic, exact planted defects, clean tests."""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import pytest

from p3bench.data import load_dataset_splits
from p3bench.data.synthetic_math import LEVELS, MAX_PROMPT_CHARS, MAX_TARGET_CHARS, load_synthetic_math
from p3bench.errors import ConfigError
from p3bench.eval.answers import EVALUATORS, last_boxed

STEP = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)")
SIZES = {"n_train": 4000, "n_val": 200, "n_test": 500}


@pytest.fixture(scope="module")
def splits():
    return load_synthetic_math(**SIZES, seed=0)


def steps(target: str) -> list[tuple[int, str, int, int]]:
    lines = target.split("\n")
    assert lines[-1].startswith("The answer is \\boxed{") and lines[-1].endswith("}.")
    parsed = []
    for line in lines[:-1]:
        match = STEP.fullmatch(line)
        assert match, f"not a step line: {line!r}"
        a, op, b, c = match.groups()
        parsed.append((int(a), op, int(b), int(c)))
    return parsed


def is_clean(ex) -> bool:
    return not ex.meta["is_noisy"] and not ex.meta["is_junk"]


def test_same_seed_identical_and_different_seed_different():
    first = load_synthetic_math(n_train=1500, n_val=50, n_test=100, seed=7)
    again = load_synthetic_math(n_train=1500, n_val=50, n_test=100, seed=7)
    other = load_synthetic_math(n_train=1500, n_val=50, n_test=100, seed=8)
    for name in ("train", "validation", "test"):
        assert [ex.to_dict() for ex in getattr(first, name)] == [ex.to_dict() for ex in getattr(again, name)]
        assert [ex.prompt for ex in getattr(first, name)] != [ex.prompt for ex in getattr(other, name)]
    assert first.info == again.info


def test_test_split_does_not_depend_on_train_size_or_rates():
    small = load_synthetic_math(n_train=100, n_val=50, n_test=100, seed=1, noise_rate=0.0)
    large = load_synthetic_math(n_train=2000, n_val=50, n_test=100, seed=1, noise_rate=0.3)
    assert [ex.to_dict() for ex in small.test] == [ex.to_dict() for ex in large.test]


def test_registry_entry(splits):
    built = load_dataset_splits("synthetic_math", n_train=50, n_val=10, n_test=10)
    assert built.name == "synthetic_math" and built.task == "qa" and len(built.train) == 50
    with pytest.raises(ConfigError, match="dataset.params.description is not a parameter"):
        load_dataset_splits("synthetic_math", n_train=50, description="a misspelled key is an error")


def test_every_clean_step_is_correct_and_boxed_answer_matches(splits):
    evaluate = EVALUATORS.get("synthetic_math")
    for ex in splits.train + splits.validation + splits.test:
        if ex.meta["is_junk"]:
            continue
        parsed = steps(ex.target)
        assert last_boxed(ex.target) == ex.answer
        checked = parsed if is_clean(ex) else parsed[:-1]  # a noisy example's last step is wrong on purpose
        for a, op, b, c in checked:
            assert c == {"+": a + b, "-": a - b, "*": a * b}[op], (ex.id, ex.target)
        assert all(c >= 0 for *_, c in parsed)
        if is_clean(ex):
            assert parsed[-1][3] == int(ex.answer) == int(ex.meta["clean_answer"])
            assert evaluate(ex.target, ex)
        # Every number of the expression appears in the prompt, in order.
        assert ex.prompt.endswith("\n") and not ex.target.startswith("\n")
        assert ex.meta["level"] in LEVELS


def test_levels_grow_in_operations(splits):
    n_ops = defaultdict(set)
    for ex in splits.test:
        n_ops[ex.meta["level"]].add(len(steps(ex.target)))
    assert n_ops[1] == {1} and n_ops[2] == {1} and n_ops[3] == {2}
    assert n_ops[4] == {3} and n_ops[5] == {3}
    types = Counter(ex.meta["type"] for ex in splits.train if not ex.meta["is_junk"])
    assert set(types) == {"addition", "subtraction", "multiplication", "mixed", "word"}
    assert all(
        any(op == "*" for _, op, _, _ in steps(ex.target)) for ex in splits.test if ex.meta["level"] >= 4
    )


def test_noisy_answers_differ_from_clean_answers(splits):
    noisy = [ex for ex in splits.train if ex.meta["is_noisy"]]
    assert noisy
    for ex in noisy:
        assert ex.answer != ex.meta["clean_answer"]
        assert last_boxed(ex.target) == ex.answer
        a, op, b, c = steps(ex.target)[-1]
        assert c == int(ex.answer) != {"+": a + b, "-": a - b, "*": a * b}[op]


@pytest.mark.parametrize(
    ("n_train", "noise", "dup", "junk"),
    [(4000, 0.1, 0.05, 0.05), (1001, 0.123, 0.2, 0.011), (500, 0.0, 0.0, 0.0)],
)
def test_exact_defect_counts(n_train, noise, dup, junk):
    built = load_synthetic_math(
        n_train=n_train, n_val=20, n_test=20, noise_rate=noise, duplicate_rate=dup, junk_rate=junk
    )
    train = built.train
    assert len(train) == n_train
    assert sum(ex.meta["is_noisy"] for ex in train) == round(noise * n_train)
    assert sum(ex.meta["is_junk"] for ex in train) == round(junk * n_train)
    assert sum(ex.meta["is_duplicate"] for ex in train) == round(dup * n_train)
    for ex in train:  # defects are disjoint
        assert ex.meta["is_noisy"] + ex.meta["is_junk"] + (ex.meta["dup_group"] is not None) <= 1


def test_duplicate_groups_share_numbers_and_target(splits):
    groups = defaultdict(list)
    for ex in splits.train:
        if ex.meta["dup_group"] is not None:
            groups[ex.meta["dup_group"]].append(ex)
        else:
            assert not ex.meta["is_duplicate"]
    assert groups
    for members in groups.values():
        assert len(members) >= 2
        assert sum(not ex.meta["is_duplicate"] for ex in members) == 1  # one original
        assert len({re.findall(r"\d+", ex.prompt).__repr__() for ex in members}) == 1
        assert len({ex.target for ex in members}) == 1 and len({ex.answer for ex in members}) == 1
        assert len({ex.prompt for ex in members}) == len(members)  # each copy differs on the surface
        assert len({(ex.meta["level"], ex.meta["type"]) for ex in members}) == 1
        assert all(is_clean(ex) for ex in members)


def test_junk_has_no_answer(splits):
    junk = [ex for ex in splits.train if ex.meta["is_junk"]]
    assert junk
    for ex in junk:
        assert ex.answer is None and "\\boxed" not in ex.target
        assert ex.meta["dup_group"] is None
    # junk is labelled like the rest: its level and type labels do not give it away
    clean_types = {ex.meta["type"] for ex in splits.train if not ex.meta["is_junk"]}
    assert {ex.meta["level"] for ex in junk} <= set(splits.info["levels"])
    assert len({ex.meta["level"] for ex in junk}) > 1 and {ex.meta["type"] for ex in junk} <= clean_types


def test_meta_fields(splits):
    keys = {"level", "type", "is_noisy", "is_junk", "dup_group", "is_duplicate", "clean_answer"}
    for ex in splits.train + splits.validation + splits.test:
        assert set(ex.meta) == keys


def test_validation_and_test_are_clean_and_balanced(splits):
    for split, n in ((splits.test, SIZES["n_test"]), (splits.validation, SIZES["n_val"])):
        assert len(split) == n
        assert all(is_clean(ex) and ex.meta["dup_group"] is None for ex in split)
        assert Counter(ex.meta["level"] for ex in split) == {level: n // len(LEVELS) for level in LEVELS}
        prefix = split[: 2 * len(LEVELS)]
        assert Counter(ex.meta["level"] for ex in prefix) == {level: 2 for level in LEVELS}
    uneven = load_synthetic_math(n_train=10, n_val=7, n_test=12, levels=[1, 3, 5])
    assert Counter(ex.meta["level"] for ex in uneven.test) == {1: 4, 3: 4, 5: 4}
    assert Counter(ex.meta["level"] for ex in uneven.validation) == {1: 3, 3: 2, 5: 2}
    assert {ex.meta["level"] for ex in uneven.train} <= {0, 1, 3, 5}


def normalised(prompt: str) -> str:
    return re.sub(r"[^a-z0-9+*-]", "", prompt.lower())


def test_no_problem_repeats_across_splits(splits):
    # The solution steps identify a problem's expression; clean train targets are unique except planted copies.
    train_targets = [ex.target for ex in splits.train if is_clean(ex) and not ex.meta["is_duplicate"]]
    assert len(train_targets) == len(set(train_targets))
    val_targets = {ex.target for ex in splits.validation}
    test_targets = {ex.target for ex in splits.test}
    assert len(test_targets) == len(splits.test) and len(val_targets) == len(splits.validation)
    assert not test_targets & set(train_targets) and not test_targets & val_targets
    assert not val_targets & set(train_targets)
    test_prompts = {normalised(ex.prompt) for ex in splits.test}
    assert not test_prompts & {normalised(ex.prompt) for ex in splits.train + splits.validation}


def test_ids_and_length_bounds(splits):
    assert [ex.id for ex in splits.train[:2]] == ["synth-train-000000", "synth-train-000001"]
    assert splits.test[42].id == "synth-test-00042" and splits.validation[0].id == "synth-val-00000"
    all_ids = [ex.id for ex in splits.train + splits.validation + splits.test]
    assert len(all_ids) == len(set(all_ids))
    for ex in splits.train + splits.validation + splits.test:
        # +1 for the newline, +1 for a near-duplicate's extra space
        assert len(ex.prompt) <= MAX_PROMPT_CHARS + 2, ex.prompt
        assert len(ex.target) <= MAX_TARGET_CHARS, ex.target
    expression_prompts = [ex.prompt for ex in splits.test if ex.meta["type"] != "word"]
    assert max(map(len, expression_prompts)) < 40


def test_invalid_arguments():
    with pytest.raises(ConfigError, match="n_train=-1"):
        load_synthetic_math(n_train=-1)
    with pytest.raises(ConfigError, match="noise_rate=1.5"):
        load_synthetic_math(n_train=10, noise_rate=1.5)
    with pytest.raises(ConfigError, match="levels=9"):
        load_synthetic_math(n_train=10, levels=9)
    with pytest.raises(ConfigError, match=r"levels=\[1, 1\]"):
        load_synthetic_math(n_train=10, levels=[1, 1])
    with pytest.raises(ConfigError, match="leave room"):
        load_synthetic_math(n_train=100, n_val=5, n_test=5, noise_rate=0.6, junk_rate=0.5)


def test_default_size_generates():
    built = load_synthetic_math()
    assert (len(built.train), len(built.validation), len(built.test)) == (20000, 500, 1000)


def test_answer_noise_keeps_the_worked_solution_and_changes_only_the_label():
    steps = load_synthetic_math(n_train=400, n_val=10, n_test=10, seed=3)
    labels = load_synthetic_math(n_train=400, n_val=10, n_test=10, seed=3, noise_kind="answer")
    assert [ex.prompt for ex in steps.train] == [ex.prompt for ex in labels.train]
    noisy = 0
    for last_step, answer_only in zip(steps.train, labels.train, strict=True):
        assert last_step.meta == answer_only.meta and last_step.answer == answer_only.answer
        if not last_step.meta["is_noisy"]:
            assert last_step.target == answer_only.target
            continue
        noisy += 1
        right, wrong = last_step.meta["clean_answer"], answer_only.answer
        *work, final = answer_only.target.split("\n")
        assert final == f"The answer is \\boxed{{{wrong}}}." and wrong != right
        # the worked solution is the clean one: its last step computes the right answer
        assert work[-1].endswith(f"= {right}")
        assert last_step.target.split("\n")[-2].endswith(f"= {wrong}")
    assert noisy == round(0.1 * 400)


def test_unknown_noise_kind_is_one_line_naming_the_choices():
    with pytest.raises(
        ConfigError, match=r"noise_kind='labels' is invalid: expected one of last_step, answer"
    ):
        load_synthetic_math(n_train=50, noise_kind="labels")
