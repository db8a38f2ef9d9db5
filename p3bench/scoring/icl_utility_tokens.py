"""The texts and token segments of DELIFT's in-context utility (arXiv 2411.04425), and the distance it takes.

DELIFT's public code (``ModelDependentICLUtility``, the teacher-forced version) scores a target ``(x_i, y_i)``
twice, each time as ``prompt + [EOS] + response + [EOS]`` with every part tokenised without special tokens:

- without a demonstration, the prompt is :data:`NO_DEMO_TEMPLATE` with ``x_i``;
- with the candidate ``(x_j, y_j)`` as the one demonstration, it is :data:`DEMO_PREFIX_TEMPLATE` with
  ``x_j, y_j`` followed by :data:`QUERY_TEMPLATE` with ``x_i``.

Only the response tokens and the final EOS are scored. The distance is
``d = ||1 - p||_2 / sqrt(N)`` over the model's probabilities ``p`` of those ``N`` tokens under teacher
forcing (:func:`response_distances`).

Segments. The demonstration prompt is tokenised as two segments, the *prefix* (everything up to and
including ``"Query:\\n"``, which depends only on the candidate) and the *query* ``"{x_i}\\n"`` (only on the
target), concatenated; the public code tokenises the whole prompt string at once. The segments are what
lets the prefix's keys and values be computed once per candidate, and the pair-by-pair reference uses the
same segments, so the two agree to float tolerance. With byte-level BPE tokenizers (GPT-2 style, the bench's
local tokenizer, Llama 3, Qwen) a newline followed by a word is split there anyway, so the segments give the
same tokens as the whole string whenever the query starts with a non-space character;
:func:`query_boundary_mismatches` counts the targets where they do not (a SentencePiece tokenizer that adds
a leading space to every segment, for instance).

Examples. ``x`` is :attr:`Example.prompt` with trailing whitespace removed (the bench's prompts end with a
newline or a space before the answer, which the templates already supply); ``y`` is :attr:`Example.target`
as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from p3bench.data.example import Example
from p3bench.errors import ConfigError

NO_DEMO_INSTRUCTION = "Please generate a response to the following query."
DEMO_INSTRUCTION = (
    "Use the following example as a guide to answer the query in the same format and style, "
    "providing a clear and concise response."
)
#: the prompt without a demonstration (the public code's, verbatim)
NO_DEMO_TEMPLATE = "Instruction: " + NO_DEMO_INSTRUCTION + "\n\n\nQuery: {query}\n"
#: the part of the demonstration prompt that depends only on the candidate (the shared prefix)
DEMO_PREFIX_TEMPLATE = (
    "Instruction:\n" + DEMO_INSTRUCTION + "\n\n\nExample:\n{demo_query}\n{demo_response}\n\n\nQuery:\n"
)
#: the rest of the demonstration prompt: the target's query
QUERY_TEMPLATE = "{query}\n"
#: bumped whenever the texts or the segmentation change, so that cached kernels are recomputed
PROMPT_VERSION = 1


def query_text(example: Example) -> str:
    """``x``: the example's prompt without trailing whitespace."""
    return example.prompt.rstrip()


def embedding_text(example: Example) -> str:
    """The text the nearest candidates are found by: prompt and response (the response alone when the
    prompt is empty), as the bench's other embedding-based selections read an example."""
    return f"{example.prompt}\n{example.target}" if example.prompt else example.target


@dataclass(frozen=True)
class ScoredSequence:
    """Token ids whose positions ``first_scored`` onwards are scored (the response and the final EOS)."""

    ids: list[int]
    first_scored: int

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class UtilitySegments:
    """Every token segment a kernel needs: per target its no-demonstration sequence and its query suffix
    (``"{x_i}\\n" + [EOS] + y_i + [EOS]``, scored from ``first_scored``), per candidate its prefix."""

    no_demo: list[ScoredSequence]
    queries: list[ScoredSequence]
    prefixes: list[list[int]]


def _ids(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def eos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's EOS id (the separator and terminator of every sequence)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError(
            f"icl_utility_kernel needs a tokenizer with an EOS token: {type(tokenizer).__name__} has none"
        )
    return int(eos)


def tokenize_segments(
    tokenizer: PreTrainedTokenizerBase, targets: Sequence[Example], candidates: Sequence[Example]
) -> UtilitySegments:
    """The segments of ``targets`` (rows) and ``candidates`` (demonstrations), untruncated."""
    eos = eos_id(tokenizer)
    responses = _ids(tokenizer, [ex.target for ex in targets])
    no_demo_prompts = _ids(tokenizer, [NO_DEMO_TEMPLATE.format(query=query_text(ex)) for ex in targets])
    query_prompts = _ids(tokenizer, [QUERY_TEMPLATE.format(query=query_text(ex)) for ex in targets])
    prefixes = _ids(
        tokenizer,
        [
            DEMO_PREFIX_TEMPLATE.format(demo_query=query_text(ex), demo_response=ex.target)
            for ex in candidates
        ],
    )
    no_demo = [
        ScoredSequence([*prompt, eos, *response, eos], len(prompt) + 1)
        for prompt, response in zip(no_demo_prompts, responses, strict=True)
    ]
    queries = [
        ScoredSequence([*prompt, eos, *response, eos], len(prompt) + 1)
        for prompt, response in zip(query_prompts, responses, strict=True)
    ]
    return UtilitySegments(no_demo=no_demo, queries=queries, prefixes=prefixes)


def query_boundary_mismatches(tokenizer: PreTrainedTokenizerBase, targets: Sequence[Example]) -> int:
    """How many targets tokenise differently after ``"Query:\\n"`` in one string than as their own segment
    (the only place where the segmented prompt can differ from the public code's whole-string one)."""
    head = "Query:\n"
    head_ids = _ids(tokenizer, [head])[0]
    texts = [QUERY_TEMPLATE.format(query=query_text(ex)) for ex in targets]
    alone = _ids(tokenizer, texts)
    joined = _ids(tokenizer, [head + text for text in texts])
    return sum(int(head_ids + a != j) for a, j in zip(alone, joined, strict=True))


def kept_length(prefix_length: int, sequence_length: int, max_length: int) -> int:
    """How many tokens of a sequence that follows ``prefix_length`` tokens survive truncation of the whole
    to ``max_length`` (the public code truncates on the right)."""
    return max(0, min(sequence_length, max_length - prefix_length))


def scored_count(prefix_length: int, sequence: ScoredSequence, max_length: int) -> int:
    """How many scored tokens of ``sequence`` survive truncation after ``prefix_length`` tokens."""
    return max(0, kept_length(prefix_length, len(sequence), max_length) - sequence.first_scored)


def response_distances(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    first_scored: torch.Tensor,
    lengths: torch.Tensor,
) -> torch.Tensor:
    """``d = ||1 - p||_2 / sqrt(N)`` per row, over the scored tokens of a right-padded batch.

    ``logits`` (B, K, V) are the model's outputs at the last ``K`` positions of ``input_ids`` (B, S);
    row ``r`` scores its tokens at positions ``first_scored[r] .. lengths[r] - 1``, each predicted by the
    logits one position earlier (``K`` must reach back to ``min(first_scored) - 1``). Probabilities are a
    float32 softmax; the sum is taken in float64. A row with no scored token gets NaN.
    """
    width = input_ids.shape[1]
    kept = logits.shape[1]
    start = width - kept  # the absolute position of logits[:, 0]
    if int(first_scored.min()) - 1 < start:
        raise ValueError("the kept logits do not reach the first scored token")
    predicting = logits[:, :-1].float()  # positions start .. width-2 predict start+1 .. width-1
    labels = input_ids[:, start + 1 :]
    label_logits = predicting.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    probabilities = torch.exp(label_logits - torch.logsumexp(predicting, dim=-1))
    positions = torch.arange(start + 1, width, device=input_ids.device).unsqueeze(0)
    mask = (positions >= first_scored.unsqueeze(1)) & (positions < lengths.unsqueeze(1))
    gaps = (1.0 - probabilities.double()) ** 2 * mask
    count = mask.sum(dim=1)
    return torch.sqrt(gaps.sum(dim=1) / count)  # 0 / 0 = NaN where nothing is scored


__all__ = [
    "DEMO_INSTRUCTION",
    "DEMO_PREFIX_TEMPLATE",
    "NO_DEMO_INSTRUCTION",
    "NO_DEMO_TEMPLATE",
    "PROMPT_VERSION",
    "QUERY_TEMPLATE",
    "ScoredSequence",
    "UtilitySegments",
    "embedding_text",
    "eos_id",
    "kept_length",
    "query_boundary_mismatches",
    "query_text",
    "response_distances",
    "scored_count",
    "tokenize_segments",
]
