"""In-context evaluation (DELIFT's ICL setting, arXiv 2411.04425): the nearest selected examples as
demonstrations, most similar first, within the context; and the settings it refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from p3bench.data.example import Example
from p3bench.embeddings import build_embedder
from p3bench.errors import ConfigError
from p3bench.eval.icl import demonstration_text, icl_prompts
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.preflight import prepare_run
from p3bench.scoring.icl_utility_neighbours import nearest_candidates
from tests.conftest import compose_config


def test_the_nearest_demonstrations_against_a_direct_sort():
    rng = np.random.default_rng(0)
    queries, demos = rng.normal(size=(7, 5)), rng.normal(size=(20, 5))
    demos[3] = demos[4]  # a tie: the lower position first
    got = nearest_candidates(queries, demos, 4)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    sims = unit(queries) @ unit(demos).T
    for row in range(7):
        expected = sorted(range(20), key=lambda j: (-round(float(sims[row, j]), 6), j))[:4]
        assert got[row].tolist() == expected
    assert nearest_candidates(queries, demos[:2], 5).shape == (7, 2)


def _examples(prefix: str, topics: list[str]) -> list[Example]:
    return [
        Example(id=f"{prefix}{i}", prompt=f"Question about {t}?\n", target=f"Answer about {t}.")
        for i, t in enumerate(topics)
    ]


TOPICS = ["red apples", "green pears", "deep rivers", "tall mountains", "fast engines", "old books"]


def test_each_query_gets_its_nearest_selected_examples_first_within_the_context():
    selected = _examples("s", TOPICS)
    test = _examples("t", ["red apples", "deep rivers"])
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in selected], vocab_size=200)
    embedder = build_embedder("tfidf")
    out = icl_prompts(
        test, selected, k=2, embedder=embedder, tokenizer=tokenizer, max_length=512, max_new_tokens=16
    )
    assert [ex.id for ex in out.examples] == ["t0", "t1"]
    first = out.examples[0].prompt
    assert first.startswith(demonstration_text(1, selected[0]))  # the same topic is the most similar
    assert first.endswith(test[0].prompt) and first.count("Example ") == 2
    assert out.examples[1].prompt.startswith(demonstration_text(1, selected[2]))
    assert out.examples[0].target == test[0].target
    assert out.info["demonstrations_mean"] == 2.0 and out.info["queries_with_fewer_than_k"] == 0
    for ex in out.examples:  # the joined prompt itself fits, with room for the response
        prompt = len(tokenizer(ex.prompt, add_special_tokens=False)["input_ids"])
        response = len(tokenizer(ex.target, add_special_tokens=False)["input_ids"]) + 1
        assert prompt <= 512 - 1 - max(response, 16)

    # a context too short for two demonstrations keeps the nearest that fit, and records it
    own = len(tokenizer(test[0].prompt, add_special_tokens=False)["input_ids"])
    demo = len(tokenizer(demonstration_text(1, selected[0]), add_special_tokens=False)["input_ids"])
    response = len(tokenizer(test[0].target, add_special_tokens=False)["input_ids"]) + 1
    tight = own + demo + 1 + max(response, 4) + 1
    out = icl_prompts(
        test[:1], selected, k=2, embedder=embedder, tokenizer=tokenizer, max_length=tight, max_new_tokens=4
    )
    assert out.examples[0].prompt == demonstration_text(1, selected[0]) + test[0].prompt
    assert out.info["queries_with_fewer_than_k"] == 1
    with pytest.raises(ValueError, match="at least one example"):
        icl_prompts(test, [], k=2, embedder=embedder, tokenizer=tokenizer, max_length=64, max_new_tokens=4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["evaluation.mode=fewshot"], "evaluation.mode='fewshot' is invalid: expected one of finetune, icl"),
        (
            ["evaluation.mode=icl", "evaluation.icl.k=0"],
            "evaluation.icl.k=0 is invalid: expected an integer >= 1",
        ),
        (
            ["evaluation.mode=icl", "regime=iso_compute"],
            "regime='iso_compute' is invalid: expected iso_epoch",
        ),
        (["evaluation.mode=icl", "method=p3"], "evaluation.mode=icl needs a static method: method 'p3'"),
        (
            ["evaluation.mode=icl", "method=random", "evaluation.icl.embedder=minlm"],
            "evaluation.icl.embedder='minlm' is not a sentence embedder",
        ),
    ],
)
def test_bad_in_context_settings_are_one_line_errors(overrides, message, tmp_path: Path, cache_dir: Path):
    cfg = compose_config(["debug=smoke", *overrides], tmp_path / "run", cache_dir)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        prepare_run(cfg)
    assert "\n" not in str(caught.value)
