"""Evaluation of generated responses (the ``instruction`` task): ROUGE-L, embedding similarity, the
response's likelihood and, optionally, an LLM judge.

DELIFT (arXiv 2411.04425, Sec. 4) scores the responses a model generates for held-out instructions with
ROUGE, the cosine similarity of BGE sentence embeddings of response and reference, and Prometheus as an
LLM judge (1-5). Per test example, in the test pass that generates greedily (``SelectionLM``):

- ``rouge_l``: ROUGE-L F1 of the generated response against the reference (``rouge-score``,
  ``RougeScorer(["rougeL"], use_stemmer=True)``);
- ``embedding_similarity``: the cosine of the two sentence embeddings (the packaged MiniLM by default, any
  embedder of :mod:`p3bench.embeddings` by name: ``dataset.params.similarity_embedder`` and
  ``similarity_embedder_kwargs``), computed once over all test records at the end of the test epoch, in
  batches;
- ``response_nll``, ``response_bpb``: the reference response's mean NLL per token (EOS included) and bits per
  UTF-8 byte under teacher forcing, the ``solution_nll`` and ``solution_bpb`` of
  :mod:`p3bench.eval.likelihood` renamed for responses;
- ``judge_score``: the LLM judge's 1-5 score (:mod:`p3bench.eval.judge`; off unless
  ``dataset.params.judge.model`` is set), with the judgement's text in ``judgement``.

:func:`instruction_metrics` gives each one's mean over the test examples that have it and its standard error
(``<name>_se``), ``n_examples``, and with the judge ``judge_parsed`` and ``judge_unparsed`` (judgements with
and without a readable score).

Where this departs from the paper: ROUGE-L rather than the code's ROUGE-1 (ROUGE-L credits the longest
common subsequence, so word order counts); MiniLM rather than ``bge-large-en-v1.5`` by default, because it
ships with the package and loads offline (``similarity_embedder=hf`` with
``similarity_embedder_kwargs.model_name_or_path=BAAI/bge-large-en-v1.5`` gives the paper's encoder); the
judge's prompt and rubric are ours.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from p3bench.data.example import Example
from p3bench.errors import ConfigError
from p3bench.eval.judge import JudgeItem, JudgeSettings, ResponseJudge, judge_settings
from p3bench.stats.intervals import mean_and_se

#: the teacher-forced fields of :mod:`p3bench.eval.likelihood`, under the names they have for a response
RESPONSE_FIELDS = {"solution_nll": "response_nll", "solution_bpb": "response_bpb"}
#: the per-example test metrics of the instruction task: ``test/<name>`` is their mean, ``_se`` its error
INSTRUCTION_METRICS = ("rouge_l", "embedding_similarity", "response_nll", "response_bpb", "judge_score")
#: where the settings live in the run's config
SETTINGS_KEY = "dataset.params"


@dataclass(frozen=True)
class InstructionEvalSettings:
    """How generated responses are evaluated beyond ROUGE-L and likelihood: the sentence embedder of the
    embedding similarity (None: no embedding similarity) with its options, and the judge."""

    similarity_embedder: str | None = "minilm"
    similarity_embedder_kwargs: dict[str, Any] = field(default_factory=dict)
    judge: JudgeSettings = field(default_factory=JudgeSettings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "similarity_embedder": self.similarity_embedder,
            "similarity_embedder_kwargs": dict(self.similarity_embedder_kwargs),
            "judge": self.judge.to_dict(),
        }


def evaluation_settings(
    similarity_embedder: str | None = "minilm",
    similarity_embedder_kwargs: Mapping[str, Any] | None = None,
    judge: Mapping[str, Any] | None = None,
) -> InstructionEvalSettings:
    """Checked :class:`InstructionEvalSettings` from the dataset's config values; a bad one is a one-line
    :class:`ConfigError` naming its key (``dataset.params.<name>``). The embedder's name is checked against
    the registry here; its options when it is built, at test time."""
    from p3bench.embeddings import EMBEDDERS

    if similarity_embedder is not None and (
        not isinstance(similarity_embedder, str) or similarity_embedder not in EMBEDDERS
    ):
        raise ConfigError(
            f"{SETTINGS_KEY}.similarity_embedder={similarity_embedder!r} is not an embedder: expected one "
            f"of {', '.join(EMBEDDERS.names())}, or null for no embedding similarity"
        )
    kwargs = similarity_embedder_kwargs or {}
    if not isinstance(kwargs, Mapping):
        raise ConfigError(
            f"{SETTINGS_KEY}.similarity_embedder_kwargs={kwargs!r} is not a mapping: expected the embedder's "
            "options, e.g. {model_name_or_path: BAAI/bge-large-en-v1.5}"
        )
    return InstructionEvalSettings(
        similarity_embedder=similarity_embedder,
        similarity_embedder_kwargs=dict(kwargs),
        judge=judge_settings(judge, f"{SETTINGS_KEY}.judge"),
    )


def settings_from_info(info: Mapping[str, Any] | None) -> InstructionEvalSettings:
    """The settings an instruction adapter recorded in its splits' ``info["response_evaluation"]`` (the
    defaults when there are none: data built by hand in a test or a notebook)."""
    recorded = (info or {}).get("response_evaluation")
    return evaluation_settings(**recorded) if recorded else InstructionEvalSettings()


# --------------------------------------------------------------------------------------- per-example scores


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F1 of each prediction against its reference (``rouge-score``, Porter stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [
        float(scorer.score(reference, prediction)["rougeL"].fmeasure)
        for prediction, reference in zip(predictions, references, strict=True)
    ]


def embedding_similarity(embedder: Any, predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """The cosine similarity of each prediction's and its reference's embeddings, from one call of
    ``embedder.embed`` over the predictions and the references together (an embedder fitted on the texts it
    embeds, as ``tfidf``, then puts both in one space; the embedder batches the call). Rows are normalised
    here, so any embedder works; a text that embeds to zeros has similarity 0."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return np.zeros(0, dtype=np.float32)
    vectors = np.asarray(embedder.embed([*predictions, *references]), dtype=np.float32)
    predicted, reference = vectors[: len(predictions)], vectors[len(predictions) :]
    norms = np.linalg.norm(predicted, axis=1) * np.linalg.norm(reference, axis=1)
    dots = np.einsum("ij,ij->i", predicted, reference)
    return np.where(norms > 0, dots / np.maximum(norms, 1e-12), 0.0).astype(np.float32)


def instruction_test_records(
    examples: Sequence[Example], generated: Sequence[str], continuous: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """One test record per example: its id (and domain where the data has one), the generated response and
    the reference, ``rouge_l``, and the teacher-forced ``response_nll`` and ``response_bpb``."""
    scores = rouge_l(generated, [ex.target for ex in examples])
    records = []
    for example, text, fields, score in zip(examples, generated, continuous, scores, strict=True):
        record: dict[str, Any] = {"id": example.id}
        if "domain" in example.meta:
            record["domain"] = example.meta["domain"]
        record["rouge_l"] = score
        record.update({RESPONSE_FIELDS[k]: v for k, v in fields.items() if k in RESPONSE_FIELDS})
        record.update(
            generated=text,
            reference=example.target,
            instruction=example.meta.get("instruction", example.prompt),
            input=example.meta.get("input", ""),
        )
        records.append(record)
    return records


def add_epoch_end_scores(
    records: list[dict[str, Any]],
    settings: InstructionEvalSettings,
    *,
    device: Any = None,
    judge: ResponseJudge | None = None,
) -> dict[str, float]:
    """Add ``embedding_similarity`` (unless ``settings.similarity_embedder`` is None) and, when the judge is
    on, ``judge_score`` and ``judgement`` to each record, in place; returns the judge's counts
    (``judge_parsed``, ``judge_unparsed``; empty without a judge). ``judge`` is a ready judge to use in place
    of loading ``settings.judge.model`` (on ``device``: the test's, unless ``settings.judge.device`` says)."""
    if not records:
        return {}
    generated = [r["generated"] for r in records]
    references = [r["reference"] for r in records]
    if settings.similarity_embedder is not None:
        from p3bench.embeddings import build_embedder

        embedder = build_embedder(settings.similarity_embedder, **settings.similarity_embedder_kwargs)
        similarities = embedding_similarity(embedder, generated, references)
        for record, value in zip(records, similarities, strict=True):
            record["embedding_similarity"] = float(value)
    if judge is None and not settings.judge.enabled:
        return {}
    if judge is None:
        judge = ResponseJudge.from_settings(settings.judge, device=device)
    items = [JudgeItem(r["instruction"], r["input"], r["generated"], r["reference"]) for r in records]
    judgements = judge.judge(items)
    for record, judgement in zip(records, judgements, strict=True):
        record["judgement"] = judgement.text
        if judgement.score is not None:
            record["judge_score"] = judgement.score
    parsed = sum(j.score is not None for j in judgements)
    return {"judge_parsed": float(parsed), "judge_unparsed": float(len(judgements) - parsed)}


def instruction_metrics(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``n_examples`` and, for each of :data:`INSTRUCTION_METRICS` some record carries, its mean over the
    records that carry it and, over two or more, its standard error (``<name>_se``)."""
    if not records:
        return {}
    metrics = {"n_examples": float(len(records))}
    for name in INSTRUCTION_METRICS:
        values = [float(r[name]) for r in records if isinstance(r.get(name), (int, float))]
        if not values:
            continue
        mean, se = mean_and_se(values)
        metrics[name] = mean
        if math.isfinite(se):
            metrics[f"{name}_se"] = se
    return metrics


# ---------------------------------------------------------------------------------------------- evaluator


def evaluate_instruction(generated_text: str, example: Example) -> bool:
    """The ``instruction`` task's evaluator (``dataset.evaluator: instruction``): it marks the test split as
    scored against reference responses (this module, in the test step) and checks nothing, so a path that
    would check answers (a pass-rate scorer) stops with one line."""
    raise ConfigError(
        f"example {example.id!r} is an instruction whose response is scored against its reference (ROUGE-L, "
        "embedding similarity, likelihood), not checked right or wrong: expected a scorer that checks no "
        "answers (e.g. likelihood) for an instruction dataset"
    )


evaluate_instruction.reference_scored = True  # type: ignore[attr-defined]
