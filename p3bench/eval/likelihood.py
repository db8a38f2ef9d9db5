"""Continuous test metrics by teacher forcing: how likely the model finds the reference solution and its final
answer, per test example, in nats and in bits per UTF-8 byte.

DataDecide (Magnusson et al., arXiv 2504.11393) found that small-scale experiments rank data choices the way
large ones do far more often when they are read on continuous likelihood metrics (the probability of the
correct answer, bits per byte) than on accuracy, which sits near its floor for small models. These metrics
are computed in the same test pass as greedy generation, from one teacher-forced forward pass over
``BOS + prompt`` and ``target + EOS`` encoded and truncated exactly as for training:

- ``solution_nll``: the mean NLL per token (nats) of the target tokens the training loss covers, EOS included
  (it is the per-example training loss on a test example);
- ``solution_bpb``: bits per UTF-8 byte of the target text: the summed NLL of its text tokens / ln 2 / its
  bytes. EOS is left out: it has no bytes, and whether a tokenizer appends one (and how surely a model
  predicts it) is a tokenizer convention, so counting it would make bits per byte depend on the tokenizer,
  which is what the measure exists to avoid;
- for an example whose answer is found in its target (:func:`locate_answer`): ``answer_nll`` (the summed NLL
  in nats of the tokens that overlap the answer's characters, given the prompt and the solution before it),
  ``answer_prob = exp(-answer_nll)`` and ``answer_bpb`` (``answer_nll`` / ln 2 / the answer's bytes);
  ``answer_located`` says whether it was found (examples without an answer carry none of these fields).

Where this departs from DataDecide: DataDecide scores answer options of multiple-choice tasks in a cloze
format; here the task's own reference solution is scored, and the answer span inside it, because the tasks
are open-ended. Tokens that overlap the answer's characters may cover a character or two around it (a space
merged into a token before a number): their NLL is counted, while ``answer_bpb`` divides by the answer
string's own bytes. A target cut by ``max_length`` is scored on the part that is kept: its bits per byte
count the bytes of the kept tokens, and an answer that falls (even partly) beyond the cut is not located.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from p3bench.eval.answers import last_box_content_span

#: the fields a test record may carry from this module; all are means over test examples in the metrics
CONTINUOUS_FIELDS = ("solution_nll", "solution_bpb", "answer_nll", "answer_prob", "answer_bpb")

_LN2 = math.log(2.0)
# a number with thousands separators, as GSM8K writes some final answers ("#### 1,080" for answer "1080")
_GROUPED_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def _occurrences(text: str, answer: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Character spans of ``answer`` in ``text[start:end]`` that are not part of a longer word or number
    (``"4"`` is not found in ``"14"``, ``"4.5"`` or ``"x4"``)."""
    end = len(text) if end is None else end
    head = r"(?<![\w.])" if answer[0].isalnum() else ""
    tail = r"(?![\w]|[.,]\d)" if answer[-1].isalnum() else ""
    pattern = re.compile(head + re.escape(answer) + tail)
    return [(m.start(), m.end()) for m in pattern.finditer(text, start, end)]


def _grouped_occurrences(text: str, answer: str, start: int = 0) -> list[tuple[int, int]]:
    """Spans of numbers written with thousands separators whose value, separators removed, is ``answer``."""
    return [
        (m.start(), m.end()) for m in _GROUPED_NUMBER.finditer(text, start) if m[0].replace(",", "") == answer
    ]


def locate_answer(target: str, answer: str | None) -> tuple[int, int] | None:
    """The character span of the final answer in ``target``, or None when it cannot be found.

    Looked for, in this order: inside the last ``\\boxed{}`` (MATH, synthetic_math), after the last ``####``
    (GSM8K), then anywhere; each time the last occurrence that is not part of a longer word or number, and
    for a number also written with thousands separators (``1,080`` for ``1080``). The answer string is
    stripped of surrounding whitespace first.
    """
    if answer is None or not answer.strip():
        return None
    answer = answer.strip()
    regions: list[tuple[int, int]] = []
    box = last_box_content_span(target)
    if box is not None:
        regions.append(box)
    marker = target.rfind("####")
    if marker >= 0:
        regions.append((marker + 4, len(target)))
    regions.append((0, len(target)))
    for start, end in regions:
        found = _occurrences(target, answer, start, end) or [
            span for span in _grouped_occurrences(target, answer, start) if span[1] <= end
        ]
        if found:
            return found[-1]
    return None


def overlapping_tokens(offsets: Sequence[tuple[int, int]], span: tuple[int, int]) -> tuple[int, int] | None:
    """The range ``[first, last + 1)`` of the tokens whose character offsets overlap ``span``; None if none
    does."""
    start, end = span
    hits = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
    return (hits[0], hits[-1] + 1) if hits else None


@dataclass(frozen=True)
class TargetLayout:
    """Where a target's text lies in its tokens: the end character of each text token (EOS excluded; None
    when the tokenizer gives no offsets), the answer's token range and its UTF-8 byte count."""

    text: str
    n_text_tokens: int
    token_char_ends: list[int] | None
    answer_tokens: tuple[int, int] | None
    answer_bytes: int
    has_answer: bool


def target_layouts(tokenizer: PreTrainedTokenizerBase, examples: Sequence[Any]) -> list[TargetLayout]:
    """The :class:`TargetLayout` of each example's target, tokenized as training encodes it (no special
    tokens; ``p3bench.models.collate.encode_examples``). Character offsets need a fast tokenizer: with a
    slow one no answer is located and a cut target gets no bits per byte."""
    targets = [ex.target for ex in examples]
    try:
        encoded = tokenizer(targets, add_special_tokens=False, return_offsets_mapping=True)
        offsets: list[list[tuple[int, int]]] | None = [list(map(tuple, o)) for o in encoded["offset_mapping"]]
        lengths = [len(ids) for ids in encoded["input_ids"]]
    except NotImplementedError:  # a slow (Python) tokenizer has no offset mapping
        offsets = None
        lengths = [len(ids) for ids in tokenizer(targets, add_special_tokens=False)["input_ids"]]
    layouts = []
    for row, ex in enumerate(examples):
        answer = getattr(ex, "answer", None)
        char_span = locate_answer(ex.target, answer) if offsets is not None else None
        tokens = overlapping_tokens(offsets[row], char_span) if offsets is not None and char_span else None
        layouts.append(
            TargetLayout(
                text=ex.target,
                n_text_tokens=lengths[row],
                token_char_ends=None if offsets is None else [b for _, b in offsets[row]],
                answer_tokens=tokens,
                answer_bytes=len(answer.strip().encode()) if tokens is not None else 0,
                has_answer=answer is not None,
            )
        )
    return layouts


def continuous_fields(target_nll: Sequence[float], layout: TargetLayout) -> dict[str, Any]:
    """The continuous metrics of one example from the NLL (nats) of each of its scored target tokens, in
    order (the text tokens kept by truncation, then EOS if it was kept), and its :class:`TargetLayout`.

    ``answer_located`` is present only for an example with an answer; the answer fields only when it is
    found and all its tokens were scored; the solution fields only when at least one target token was.
    """
    record: dict[str, Any] = {}
    scored = len(target_nll)
    text_scored = min(scored, layout.n_text_tokens)
    if scored > 0:
        record["solution_nll"] = math.fsum(target_nll) / scored
    if text_scored == layout.n_text_tokens:
        n_bytes = len(layout.text.encode())
    elif layout.token_char_ends is not None and text_scored > 0:
        n_bytes = len(layout.text[: layout.token_char_ends[text_scored - 1]].encode())
    else:
        n_bytes = 0
    if n_bytes > 0:
        record["solution_bpb"] = math.fsum(target_nll[:text_scored]) / _LN2 / n_bytes
    if layout.has_answer:
        span = layout.answer_tokens
        located = span is not None and span[1] <= text_scored and layout.answer_bytes > 0
        if located:
            answer_nll = math.fsum(target_nll[span[0] : span[1]])
            record["answer_nll"] = answer_nll
            record["answer_prob"] = math.exp(-answer_nll)
            record["answer_bpb"] = answer_nll / _LN2 / layout.answer_bytes
        record["answer_located"] = located
    return record
