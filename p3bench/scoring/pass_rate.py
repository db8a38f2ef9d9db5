"""Difficulty as the current model's pass rate: sample k answers per problem and check each one.

A problem every sample solves has score 1 (easy), one no sample solves has score 0. Answers are checked
by the run's evaluator (``module.evaluator``: MATH/GSM8K answer checking; code tests once the APPS
harness provides a code evaluator), or by an explicit ``checker(generated_text, example) -> bool``.
Sampling is seeded from the selection round, inside a forked RNG so the training RNG is untouched.
Forward tokens count each sample's prompt and generated tokens (a cached decoder processes each once).
With ``progress``, a bar counts the problems scored, and one below it the programs of a batch being run
when the checker executes code (APPS).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from p3bench.data.example import Example
from p3bench.eval.answers import check_all
from p3bench.models.collate import GenerationCollator
from p3bench.scoring.base import (
    Scorer,
    ScoreResult,
    ScoringItems,
    all_reduce_sum,
    gather_rows,
    length_buckets,
    shard,
    timed,
)
from p3bench.utils.progress import progress_bar


class PassRateScorer(Scorer):
    """Fraction of ``k`` sampled answers (temperature ``temperature``, nucleus ``top_p``) that are correct."""

    name = "pass_rate"

    def __init__(
        self,
        k: int = 4,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int | None = None,
        batch_size: int = 32,
        max_batch_tokens: int | None = None,
        seed: int = 0,
        checker: Callable[[str, Example], bool] | None = None,
        progress: bool = True,
    ) -> None:
        if k < 1:
            raise ValueError(f"pass_rate k={k} must be >= 1")
        if temperature <= 0:
            raise ValueError(f"pass_rate temperature={temperature} must be > 0 (sampling)")
        self.k = int(k)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.max_new_tokens = max_new_tokens
        self.batch_size = int(batch_size)
        self.max_batch_tokens = None if max_batch_tokens is None else int(max_batch_tokens)
        self.seed = int(seed)
        self.checker = checker
        self.progress = bool(progress)

    def score(
        self, module: Any, items: ScoringItems, *, want_features: bool = False, round: int = 0
    ) -> ScoreResult:
        checker = self.checker or getattr(module, "evaluator", None)
        if checker is None:
            raise ValueError("the pass_rate scorer needs an answer checker: the run's evaluator or `checker`")
        max_new_tokens = int(self.max_new_tokens or getattr(module, "max_new_tokens", 64))
        tokenizer = items.tokenizer
        call_seed = self.seed * 1_000_003 + int(round)

        def run() -> ScoreResult:
            positions, _, world = shard(len(items))
            lengths = [len(items.encoded.prompt_ids[items.indices[p]]) for p in positions]
            batches = length_buckets(lengths, max(1, self.batch_size), self.max_batch_tokens)
            collate = GenerationCollator(tokenizer.pad_token_id, items.max_length)
            model, device = module.model, module.device
            was_training = model.training
            model.eval()
            correct = np.zeros(len(positions), dtype=np.float64)
            tokens = 0
            local = {p: n for n, p in enumerate(positions)}
            devices = [device] if device.type == "cuda" else []
            try:
                with (
                    torch.random.fork_rng(devices=devices),
                    torch.inference_mode(),
                    progress_bar(
                        total=len(positions),
                        desc="scoring (pass rate)",
                        unit="problem",
                        enabled=self.progress,
                    ) as bar,
                ):
                    torch.manual_seed(call_seed)
                    for batch_positions in batches:
                        pool_indices = [items.indices[positions[b]] for b in batch_positions]
                        batch = collate(
                            [{"index": i, "prompt_ids": items.encoded.prompt_ids[i]} for i in pool_indices]
                        )
                        input_ids = batch["input_ids"].to(device)
                        attention = batch["attention_mask"].to(device)
                        output = model.generate(
                            input_ids=input_ids,
                            attention_mask=attention,
                            do_sample=True,
                            temperature=self.temperature,
                            top_p=self.top_p,
                            num_return_sequences=self.k,
                            max_new_tokens=max_new_tokens,
                            pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=tokenizer.eos_token_id,
                        )
                        generated = output[:, input_ids.size(1) :]
                        texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
                        tokens += self.k * int(attention.sum()) + generated_token_count(generated, tokenizer)
                        pairs = [
                            (t, items.examples[i])
                            for n, i in enumerate(pool_indices)
                            for t in texts[n * self.k : (n + 1) * self.k]
                        ]
                        verdicts = check_verdicts(checker, pairs, self.progress)
                        for n in range(len(pool_indices)):
                            hits = sum(verdicts[n * self.k : (n + 1) * self.k])
                            correct[local[positions[batch_positions[n]]]] = hits / self.k
                        bar.update(len(batch_positions))
            finally:
                model.train(was_training)
            rows = gather_rows(positions, {"score": correct}, len(items), world)
            return ScoreResult(
                scores=rows["score"],
                forward_tokens=all_reduce_sum(tokens),
                diagnostics={
                    "k": self.k,
                    "temperature": self.temperature,
                    "mean_pass_rate": float(rows["score"].mean()),
                },
            )

        return timed(run)


def check_verdicts(
    checker: Callable[[str, Example], bool], pairs: list[tuple[str, Example]], progress: bool
) -> list[bool]:
    """The checker's verdicts on ``pairs`` (:func:`~p3bench.eval.answers.check_all`). A checker whose batch
    form takes ``progress`` (the APPS evaluator, which runs every program in a sandbox) shows a bar over the
    programs of the batch when a check takes a while."""
    batch = getattr(checker, "batch", None)
    try:
        takes_progress = batch is not None and "progress" in inspect.signature(batch).parameters
    except (TypeError, ValueError):  # a callable without an inspectable signature
        takes_progress = False
    if takes_progress:
        return [bool(v) for v in batch(pairs, progress=progress)]
    return check_all(checker, pairs)


def generated_token_count(generated: torch.Tensor, tokenizer: Any) -> int:
    """Generated tokens up to and including each sequence's first end-of-sequence token."""
    if generated.numel() == 0:
        return 0
    eos = tokenizer.eos_token_id
    if eos is None:
        return int(generated.numel())
    is_eos = generated == eos
    first = torch.where(
        is_eos.any(dim=1),
        is_eos.float().argmax(dim=1) + 1,
        torch.full_like(is_eos[:, 0], generated.size(1), dtype=torch.long),
    )
    return int(first.sum())
