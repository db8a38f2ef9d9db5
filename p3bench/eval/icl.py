"""In-context evaluation of a selection (DELIFT, arXiv 2411.04425, Sec. 4: the "ICL" setting): no training;
each test query is answered with the ``k`` selected examples most similar to it as demonstrations, so that
a selection can be judged in seconds.

As in DELIFT's public code (``subset_selection/inference_icl.py``): the nearest selected examples by cosine
similarity of sentence embeddings (the query's prompt against each selected example's prompt and response),
the most similar first, each written as ``Example {n}:\\n{prompt}{response}\\n``, then the query's own
prompt. Departures: the packaged MiniLM in place of BGE (any embedder by name: ``evaluation.icl.embedder``);
when the demonstrations and the query do not fit the model's context (the dataset's ``max_length``, less
BOS and room for the longer of the query's reference response and the tokens generated, so that the
teacher-forced response metrics see the whole reference), the least similar demonstrations are left out
until they do, and how many were kept is recorded (the code truncates nothing and relies on a long
context).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from p3bench.data.example import Example
from p3bench.embeddings import Embedder, cached_embeddings_counted
from p3bench.scoring.icl_utility_neighbours import nearest_candidates

#: how a demonstration is written before the query (the public code's layout)
DEMONSTRATION_TEMPLATE = "Example {number}:\n{prompt}{response}\n"


@dataclass
class ICLPrompts:
    """The test examples with demonstrations in their prompts, and what was recorded about them."""

    examples: list[Example]
    forward_tokens: int
    info: dict[str, Any]


def _token_count(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def demonstration_text(number: int, example: Example) -> str:
    return DEMONSTRATION_TEMPLATE.format(number=number, prompt=example.prompt, response=example.target)


def icl_prompts(
    test: Sequence[Example],
    selected: Sequence[Example],
    *,
    k: int,
    embedder: Embedder,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    max_new_tokens: int,
    cache_dir: str | Path | None = None,
) -> ICLPrompts:
    """``test`` with up to ``k`` demonstrations from ``selected`` before each prompt (module docstring)."""
    if not selected:
        raise ValueError("in-context evaluation needs a selection with at least one example")
    queries = [ex.prompt for ex in test]
    demos = [ex.prompt + ex.target for ex in selected]
    vectors, tokens = cached_embeddings_counted(embedder, [*queries, *demos], cache_dir)
    # most similar first, ties to the lower position (the kernel's neighbour search)
    nearest = nearest_candidates(vectors[: len(queries)], vectors[len(queries) :], k)
    examples: list[Example] = []
    kept_counts: list[int] = []
    for example, positions in zip(test, nearest, strict=True):
        own = _token_count(tokenizer, example.prompt)
        response = _token_count(tokenizer, example.target) + 1  # and EOS
        room = max_length - 1 - max(response, max_new_tokens)
        parts: list[str] = []
        used = own
        for number, position in enumerate(positions.tolist(), start=1):
            text = demonstration_text(number, selected[position])
            cost = _token_count(tokenizer, text)
            if used + cost > room:
                break
            parts.append(text)
            used += cost

        # a merge across a boundary can make the whole longer than its parts: drop the least similar then
        while parts and _token_count(tokenizer, "".join(parts) + example.prompt) > room:
            parts.pop()
        kept_counts.append(len(parts))
        examples.append(replace(example, prompt="".join(parts) + example.prompt))
    counts = np.asarray(kept_counts)
    info = {
        "mode": "icl",
        "k": int(k),
        "embedder": repr(embedder),
        "n_demonstration_pool": len(selected),
        "demonstrations_mean": float(counts.mean()) if counts.size else 0.0,
        "queries_with_fewer_than_k": int(np.sum(counts < min(k, len(selected)))),
        "queries_without_demonstrations": int(np.sum(counts == 0)),
        "max_length": int(max_length),
    }
    return ICLPrompts(examples=examples, forward_tokens=int(tokens), info=info)
