"""An LLM as judge of generated responses: an absolute 1-5 score against a reference answer and a rubric.

DELIFT (arXiv 2411.04425) reports an "LLM-as-judge" score next to ROUGE and embedding similarity: Prometheus
(``prometheus-eval/prometheus-7b-v2.0``) grading each response on a 1-5 rubric with the reference answer
shown. This module does the same with any causal LM by name (:attr:`JudgeSettings.model`; a hub id needs
``offline=false`` or the local Hugging Face cache, and a GPU at that size) and our own prompt and default
rubric (:data:`JUDGE_PROMPT`, :data:`DEFAULT_RUBRIC`); neither is Prometheus's text. The judge writes a short
feedback and a final ``Score: N`` line; :func:`parse_judge_score` reads the last ``Score: N`` (or
Prometheus's ``[RESULT] N``) with N from 1 to 5. A judgement it cannot read gets no score and is counted
(``test/judge_unparsed``), never guessed.

Where this departs from the paper: the prompt and rubric are ours (the paper's Prometheus prompt is that
model's own format; a Prometheus judge given ours still ends with ``[RESULT] N``, which is read too);
generation is greedy; a response or reference longer than :attr:`JudgeSettings.max_field_chars` characters
is cut to that length before it is shown to the judge.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from p3bench.errors import ConfigError

DEFAULT_RUBRIC = (
    "How well does the response carry out the instruction: is it correct, complete, relevant and clear?\n"
    "1: it ignores the instruction, or is wrong or unusable.\n"
    "2: it attempts the instruction but is mostly wrong, incomplete or off topic.\n"
    "3: it is partly right; important parts are missing or wrong.\n"
    "4: it is right and useful, with small omissions or flaws.\n"
    "5: it is right, complete and clear, as good as the reference answer or better."
)

JUDGE_PROMPT = (
    "You grade a response written for an instruction. A reference answer that would earn the top score "
    "is given for comparison; the response need not match its wording.\n\n"
    "### Instruction:\n{instruction}\n\n{input_block}"
    "### Response to grade:\n{response}\n\n"
    "### Reference answer:\n{reference}\n\n"
    "### Rubric (scores 1 to 5):\n{rubric}\n\n"
    "Write one or two sentences of feedback on the response, then end with a line of the form "
    '"Score: N", where N is an integer from 1 to 5.'
)

_SCORE = re.compile(r"(?:\bscore\b|\[result\])\s*(?:[:=]|is|of)?\s*\**\s*([1-5])(?!\d|[.,]\d)", re.IGNORECASE)


def parse_judge_score(text: str) -> int | None:
    """The score (1-5) of a judgement: the last ``Score: N`` (also ``score = N``, ``score is N``, ``score of
    N``, ``**Score:** N``, ``Score: N/5``) or ``[RESULT] N`` in ``text``; None when there is none (``Score:
    4.5`` and ``Score: 10`` are not read as 4 or 1)."""
    found = _SCORE.findall(text or "")
    return int(found[-1]) if found else None


@dataclass(frozen=True)
class JudgeSettings:
    """The judge's settings (``dataset.params.judge``); ``model: null`` (the default) turns it off.

    ``model``: a hub id or local directory of a causal LM; ``rubric``: the rubric text, null for
    :data:`DEFAULT_RUBRIC`; ``max_new_tokens``: the judgement's length; ``batch_size``: judgements generated
    at once; ``max_field_chars``: the longest response or reference shown; ``dtype``: ``auto`` (bfloat16 on
    CUDA, float32 elsewhere), ``float32``, ``bfloat16`` or ``float16``; ``device``: null for the device the
    test runs on; ``offline``: load from a local path or the Hugging Face cache only; ``revision``: a hub
    revision."""

    model: str | None = None
    rubric: str | None = None
    max_new_tokens: int = 128
    batch_size: int = 4
    max_field_chars: int = 4000
    dtype: str = "auto"
    device: str | None = None
    offline: bool = True
    revision: str | None = None

    @property
    def enabled(self) -> bool:
        return self.model is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge_settings(config: Mapping[str, Any] | None, key: str) -> JudgeSettings:
    """:class:`JudgeSettings` from a config mapping (None: the defaults, judge off); an unknown key or a bad
    value is a one-line :class:`ConfigError` naming ``key``."""
    if config is None:
        return JudgeSettings()
    if not isinstance(config, Mapping):
        raise ConfigError(f"{key}={config!r} is not a mapping: expected keys such as model and rubric")
    known = list(JudgeSettings.__dataclass_fields__)
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]} is not a judge setting: expected one of {', '.join(known)}")
    settings = JudgeSettings(**config)
    for name in ("model", "rubric", "device", "revision"):
        value = getattr(settings, name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"{key}.{name}={value!r} is invalid: expected a non-empty string or null")
    for name in ("max_new_tokens", "batch_size", "max_field_chars"):
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}.{name}={value!r} is invalid: expected an integer >= 1")
    if settings.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ConfigError(
            f"{key}.dtype={settings.dtype!r} is invalid: expected auto, float32, bfloat16 or float16"
        )
    if not isinstance(settings.offline, bool):
        raise ConfigError(f"{key}.offline={settings.offline!r} is invalid: expected true or false")
    return settings


@dataclass(frozen=True)
class JudgeItem:
    """What the judge sees of one test example."""

    instruction: str
    input: str
    response: str
    reference: str


@dataclass(frozen=True)
class Judgement:
    """The judge's text and the score read from it (None when none could be read)."""

    text: str
    score: int | None


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + " [...]"


class ResponseJudge:
    """Grades responses with a causal LM: builds the prompt (:meth:`prompt`), applies the tokenizer's chat
    template when it has one, generates greedily in left-padded batches and parses the score.

    Args:
        model: a causal LM (``PreTrainedModel``), already on its device.
        tokenizer: its tokenizer.
        rubric: the rubric text (:data:`DEFAULT_RUBRIC` when None).
        max_new_tokens, batch_size, max_field_chars: as :class:`JudgeSettings`.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        rubric: str | None = None,
        max_new_tokens: int = 128,
        batch_size: int = 4,
        max_field_chars: int = 4000,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.rubric = rubric or DEFAULT_RUBRIC
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.max_field_chars = int(max_field_chars)

    @classmethod
    def from_settings(cls, settings: JudgeSettings, device: Any = None) -> ResponseJudge:
        """The judge ``settings.model`` names, loaded by :func:`p3bench.scoring.ask_llm.load_checkpoint`
        (offline unless ``settings.offline`` is false; a failure is one line naming the model) on
        ``settings.device``, else ``device``."""
        from p3bench.scoring.ask_llm import load_checkpoint

        if settings.model is None:
            raise ConfigError("the judge has no model: set dataset.params.judge.model")
        model, tokenizer, _, _ = load_checkpoint(
            settings.model,
            role="judge",
            model_kind="causal",
            revision=settings.revision,
            offline=settings.offline,
            device=settings.device or device,
            dtype=settings.dtype,
            allowed_kinds=("causal",),
        )
        model.eval()
        return cls(
            model,
            tokenizer,
            rubric=settings.rubric,
            max_new_tokens=settings.max_new_tokens,
            batch_size=settings.batch_size,
            max_field_chars=settings.max_field_chars,
        )

    def prompt(self, item: JudgeItem) -> str:
        """The judge's request for one response (before any chat template)."""
        limit = self.max_field_chars
        input_block = f"### Input:\n{_cut(item.input, limit)}\n\n" if item.input.strip() else ""
        return JUDGE_PROMPT.format(
            instruction=_cut(item.instruction, limit),
            input_block=input_block,
            response=_cut(item.response, limit) or "(empty)",
            reference=_cut(item.reference, limit),
            rubric=self.rubric,
        )

    def model_text(self, item: JudgeItem) -> str:
        """The text the judge model reads: :meth:`prompt` as a user turn of the tokenizer's chat template
        (with the assistant's turn opened) when it has one, else the prompt itself."""
        prompt = self.prompt(item)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        return prompt

    def judge(self, items: Sequence[JudgeItem]) -> list[Judgement]:
        """One :class:`Judgement` per item, in order."""
        import torch

        texts = [self.model_text(item) for item in items]
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        device = next(self.model.parameters()).device
        judgements: list[Judgement] = []
        for start in range(0, len(texts), self.batch_size):
            # a chat template writes its own special tokens; a plain prompt gets the tokenizer's (BOS)
            plain = not getattr(self.tokenizer, "chat_template", None)
            rows = [
                self.tokenizer(text, add_special_tokens=plain)["input_ids"]
                for text in texts[start : start + self.batch_size]
            ]
            width = max(len(r) for r in rows)
            input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
            for row, ids in enumerate(rows):
                input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention_mask[row, width - len(ids) :] = 1
            with torch.inference_mode():
                output = self.model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad_id,
                    eos_token_id=self.tokenizer.eos_token_id,
                )
            decoded = self.tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
            judgements.extend(Judgement(text, parse_judge_score(text)) for text in decoded)
        return judgements
