"""Instruction data (the ``instruction`` task): an instruction, an optional input and the reference response.

Records in the Alpaca format (``instruction``, ``input``, ``output``; Taori et al. 2023; DELIFT, arXiv
2411.04425, fine-tunes on Alpaca-style data in its public code's experiments) become :class:`Example` objects
with:

- ``prompt``: the Alpaca prompt template, with or without the input (:func:`alpaca_prompt`), ending in
  ``### Response:`` and a newline, so the loss (on the target only, as for every task) covers the response;
- ``target``: the response, surrounding whitespace removed; ``answer``: None (nothing to check: responses
  are scored against the reference, :mod:`p3bench.eval.instruction`);
- ``id``: ``<dataset>-<12 hex digits>``, a content hash of the instruction, input and response, so that an id
  does not change when records are skipped, reordered or subsampled; a repeat of an identical record gets
  ``-2``, ``-3``, ... in file order (``<dataset>-test-...`` for a given test file);
- ``meta``: ``instruction`` and ``input`` (whitespace stripped; what the LLM judge shows), ``has_input``, and
  ``domain`` (the record's category, e.g. Dolly's ``category``) where the dataset has one.

The template is Alpaca's, so that models tuned on Alpaca-format data read the prompts they were trained on;
these are the prompts the run trains and tests on (DELIFT's utility kernel writes its own, in
``p3bench/scoring``).

Adapters: ``alpaca`` and ``dolly`` read such records from local files (``data_files``) or a hub dataset
(``hub_id``; the field names are settings, e.g. ``input_field=context output_field=response`` for
``databricks/databricks-dolly-15k``); ``gsm8k_instruct`` is GSM8K (:mod:`p3bench.data.gsm8k`) as
instructions: the question the instruction and the worked solution (calculator annotations removed, the
``#### N`` line kept) the response, with GSM8K's own ids and splits.

Splits: validation and test are carved from the records (seeded, stratified by ``domain`` where there is one)
unless given as files or a hub ``test_split``; ``max_train`` then caps the train pool. A record whose
instruction or response is empty or not a string, or whose prompt and response exceed ``max_chars``
characters, is a one-line error naming the file and the record, unless ``skip_bad=true`` (then skipped and
counted in ``info.n_skipped``).

``similarity_embedder``, ``similarity_embedder_kwargs`` and ``judge`` are the settings of the evaluation of
generated responses (:mod:`p3bench.eval.instruction`): they are checked here, before anything runs, and
recorded in ``info["response_evaluation"]``, where the test step reads them.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from p3bench.data.example import DatasetSplits, Example
from p3bench.data.records import Validator, carve_splits, read_source
from p3bench.errors import ConfigError
from p3bench.eval.instruction import InstructionEvalSettings, evaluation_settings

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
    "### Input:\n{input}\n\n### Response:\n"
)


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    """The Alpaca prompt for ``instruction`` and, when it is not blank, ``input_text``."""
    if input_text.strip():
        return ALPACA_PROMPT_WITH_INPUT.format(instruction=instruction, input=input_text)
    return ALPACA_PROMPT.format(instruction=instruction)


@dataclass(frozen=True)
class InstructionFields:
    """The record fields an adapter reads: instruction and response required, input and domain optional."""

    instruction: str = "instruction"
    input: str | None = "input"
    output: str = "output"
    domain: str | None = None

    def check(self) -> None:
        for key in ("instruction", "output"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value:
                raise ConfigError(
                    f"dataset.params.{key}_field={value!r} is not a field name: expected a string"
                )
        for key in ("input", "domain"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(
                    f"dataset.params.{key}_field={value!r} is not a field name: expected a string or null"
                )


def _text(record: dict, field: str | None) -> str:
    value = record.get(field) if field is not None else None
    return value.strip() if isinstance(value, str) else ""


def _validator(fields: InstructionFields, max_chars: int | None) -> Validator:
    def validate(record: dict) -> str | None:
        for name, what in ((fields.instruction, "instruction"), (fields.output, "response")):
            value = record[name]
            if not isinstance(value, str):
                return f"field {name!r} is a {type(value).__name__}: expected a string (the {what})"
            if not value.strip():
                return f"field {name!r} is empty: expected a non-empty {what}"
        for name in (fields.input, fields.domain):
            value = record.get(name) if name is not None else None
            if value is not None and not isinstance(value, str):
                return f"field {name!r} is a {type(value).__name__}: expected a string or null"
        if max_chars is not None:
            size = len(alpaca_prompt(_text(record, fields.instruction), _text(record, fields.input)))
            size += len(_text(record, fields.output))
            if size > max_chars:
                return (
                    f"prompt and response are {size} characters: expected at most max_chars={max_chars} "
                    "(raise it, or set it to null for no limit)"
                )
        return None

    return validate


def content_id(prefix: str, instruction: str, input_text: str, response: str) -> str:
    """``<prefix>-<12 hex digits>``: the sha256 of the three texts, each length-prefixed."""
    digest = hashlib.sha256()
    for part in (instruction, input_text, response):
        data = part.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return f"{prefix}-{digest.hexdigest()[:12]}"


def _to_examples(rows: list[dict], prefix: str, fields: InstructionFields) -> list[Example]:
    examples = []
    seen: Counter[str] = Counter()
    for record in rows:
        instruction, input_text = _text(record, fields.instruction), _text(record, fields.input)
        response = _text(record, fields.output)
        base = content_id(prefix, instruction, input_text, response)
        seen[base] += 1
        meta: dict[str, Any] = {
            "instruction": instruction,
            "input": input_text,
            "has_input": bool(input_text),
        }
        if fields.domain is not None:
            meta["domain"] = record.get(fields.domain)
        examples.append(
            Example(
                id=base if seen[base] == 1 else f"{base}-{seen[base]}",
                prompt=alpaca_prompt(instruction, input_text),
                target=response,
                answer=None,
                meta=meta,
            )
        )
    return examples


def _check_max_chars(max_chars: Any) -> int | None:
    if max_chars is None:
        return None
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
        raise ConfigError(f"dataset.params.max_chars={max_chars!r} is invalid: expected a count >= 1 or null")
    return max_chars


def instruction_splits(
    name: str,
    sources: Mapping[str, list[Example]],
    *,
    val_size: int | float,
    test_size: int | float,
    seed: int,
    max_train: int | None,
    info: dict[str, Any],
    settings: InstructionEvalSettings,
) -> DatasetSplits:
    """The ``instruction`` task's splits from examples by source split: the missing ones carved from train
    (seeded, stratified by ``meta["domain"]``), ``max_train`` applied, the evaluation ``settings`` recorded
    in ``info["response_evaluation"]``."""
    train, validation, test = carve_splits(
        name,
        sources,
        val_size=val_size,
        test_size=test_size,
        seed=seed,
        max_train=max_train,
        stratify_key=lambda ex: ex.meta.get("domain"),
        carvable=lambda ex: True,
        what="records",
        ids_expected="unique ids (content hashes of instruction, input and response)",
    )
    info = {
        **info,
        "template": "alpaca",
        "test_from": "given" if "test" in sources else "train",
        "validation_from": "given" if "validation" in sources else "train",
        "response_evaluation": settings.to_dict(),
    }
    return DatasetSplits(
        name=name, task="instruction", train=train, validation=validation, test=test, info=info
    )


def load_alpaca_style(
    name: str,
    fields: InstructionFields,
    *,
    data_files: Any = None,
    hub_id: str | None = None,
    hub_config: str | None = None,
    split: str = "train",
    test_split: str | None = None,
    val_size: int | float = 200,
    test_size: int | float = 200,
    seed: int = 0,
    max_train: int | None = None,
    skip_bad: bool = False,
    max_chars: int | None = None,
    similarity_embedder: str | None = "minilm",
    similarity_embedder_kwargs: Mapping[str, Any] | None = None,
    judge: Mapping[str, Any] | None = None,
) -> DatasetSplits:
    """Splits of Alpaca-format records named ``name``; see the module docstring."""
    fields.check()
    max_chars = _check_max_chars(max_chars)
    # a bad evaluation setting fails before the records are read
    settings = evaluation_settings(similarity_embedder, similarity_embedder_kwargs, judge)
    records, n_skipped, source = read_source(
        name,
        data_files=data_files,
        hub_id=hub_id,
        hub_config=hub_config,
        split=split,
        test_split=test_split,
        required=(fields.instruction, fields.output),
        skip_bad=skip_bad,
        validate=_validator(fields, max_chars),
    )
    examples = {
        part: _to_examples(rows, name if part == "train" else f"{name}-{part}", fields)
        for part, rows in records.items()
    }
    info = {
        "source": source,
        "n_records": sum(len(rows) for rows in records.values()),
        "n_skipped": n_skipped,
        "n_with_input": sum(ex.meta["has_input"] for part in examples.values() for ex in part),
        "fields": {key: getattr(fields, key) for key in ("instruction", "input", "output", "domain")},
    }
    return instruction_splits(
        name,
        examples,
        val_size=val_size,
        test_size=test_size,
        seed=seed,
        max_train=max_train,
        info=info,
        settings=settings,
    )


def load_alpaca(
    data_files: Any = None,
    hub_id: str | None = None,
    hub_config: str | None = None,
    split: str = "train",
    test_split: str | None = None,
    val_size: int | float = 200,
    test_size: int | float = 200,
    seed: int = 0,
    max_train: int | None = None,
    skip_bad: bool = False,
    max_chars: int | None = None,
    instruction_field: str = "instruction",
    input_field: str | None = "input",
    output_field: str = "output",
    domain_field: str | None = None,
    similarity_embedder: str | None = "minilm",
    similarity_embedder_kwargs: Mapping[str, Any] | None = None,
    judge: Mapping[str, Any] | None = None,
) -> DatasetSplits:
    """Alpaca (Taori et al. 2023) from local files or a hub dataset (``tatsu-lab/alpaca``)."""
    return load_alpaca_style(
        "alpaca",
        InstructionFields(instruction_field, input_field, output_field, domain_field),
        data_files=data_files,
        hub_id=hub_id,
        hub_config=hub_config,
        split=split,
        test_split=test_split,
        val_size=val_size,
        test_size=test_size,
        seed=seed,
        max_train=max_train,
        skip_bad=skip_bad,
        max_chars=max_chars,
        similarity_embedder=similarity_embedder,
        similarity_embedder_kwargs=similarity_embedder_kwargs,
        judge=judge,
    )


def load_dolly(
    data_files: Any = None,
    hub_id: str | None = None,
    hub_config: str | None = None,
    split: str = "train",
    test_split: str | None = None,
    val_size: int | float = 200,
    test_size: int | float = 300,
    seed: int = 0,
    max_train: int | None = None,
    skip_bad: bool = False,
    max_chars: int | None = None,
    instruction_field: str = "instruction",
    input_field: str | None = "input",
    output_field: str = "output",
    domain_field: str | None = "category",
    similarity_embedder: str | None = "minilm",
    similarity_embedder_kwargs: Mapping[str, Any] | None = None,
    judge: Mapping[str, Any] | None = None,
) -> DatasetSplits:
    """Dolly (Conover et al. 2023) from local files or a hub dataset; its ``category`` becomes
    ``meta["domain"]`` (splits are stratified by it). The hub dataset ``databricks/databricks-dolly-15k``
    names its fields ``context`` and ``response``: set ``input_field`` and ``output_field``."""
    return load_alpaca_style(
        "dolly",
        InstructionFields(instruction_field, input_field, output_field, domain_field),
        data_files=data_files,
        hub_id=hub_id,
        hub_config=hub_config,
        split=split,
        test_split=test_split,
        val_size=val_size,
        test_size=test_size,
        seed=seed,
        max_train=max_train,
        skip_bad=skip_bad,
        max_chars=max_chars,
        similarity_embedder=similarity_embedder,
        similarity_embedder_kwargs=similarity_embedder_kwargs,
        judge=judge,
    )


def load_gsm8k_instruct(
    data_files: Any = None,
    hub_id: str | None = None,
    hub_config: str | None = "main",
    split: str = "train",
    val_size: int | float = 500,
    test_size: int | float = 1000,
    seed: int = 0,
    skip_bad: bool = False,
    max_train: int | None = None,
    test_split: str | None = None,
    similarity_embedder: str | None = "minilm",
    similarity_embedder_kwargs: Mapping[str, Any] | None = None,
    judge: Mapping[str, Any] | None = None,
) -> DatasetSplits:
    """GSM8K as instructions: :func:`p3bench.data.gsm8k.load_gsm8k`'s splits and ids (the same settings give
    the same test questions as ``dataset=gsm8k``), each prompt the Alpaca template around the question, the
    worked solution the response, no answer to check."""
    from p3bench.data.gsm8k import load_gsm8k

    settings = evaluation_settings(similarity_embedder, similarity_embedder_kwargs, judge)
    splits = load_gsm8k(
        data_files=data_files,
        hub_id=hub_id,
        hub_config=hub_config,
        split=split,
        val_size=val_size,
        test_size=test_size,
        seed=seed,
        skip_bad=skip_bad,
        max_train=max_train,
        test_split=test_split,
    )

    def as_instruction(ex: Example) -> Example:
        question = ex.prompt.strip()
        meta = {"instruction": question, "input": "", "has_input": False, "n_steps": ex.meta["n_steps"]}
        return replace(ex, prompt=alpaca_prompt(question), answer=None, meta=meta)

    info = {
        **{k: v for k, v in splits.info.items() if k != "n_no_answer"},
        "template": "alpaca",
        "response_evaluation": settings.to_dict(),
    }
    return DatasetSplits(
        name="gsm8k_instruct",
        task="instruction",
        train=[as_instruction(ex) for ex in splits.train],
        validation=[as_instruction(ex) for ex in splits.validation],
        test=[as_instruction(ex) for ex in splits.test],
        info=info,
    )
