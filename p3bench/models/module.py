"""The LightningModule every method trains: per-example target losses, weighted as the method says, and
on the test split greedy generation for answer checking (qa, code) or for scoring against the reference
(instruction) with teacher-forced continuous metrics, or held-out perplexity (lm)."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from p3bench.data.example import TASK_KINDS
from p3bench.errors import ConfigError
from p3bench.eval.answers import check_all
from p3bench.eval.instruction import (
    add_epoch_end_scores,
    instruction_metrics,
    instruction_test_records,
    settings_from_info,
)
from p3bench.eval.likelihood import continuous_fields, target_layouts
from p3bench.execution.metrics import pass_at_k
from p3bench.models.collate import IGNORE_INDEX
from p3bench.models.losses import per_example_nll, target_token_counts
from p3bench.stats.intervals import mean_and_se, wilson_interval
from p3bench.throughput import Throughput

#: the most logits (batch rows x positions x vocabulary) one teacher-forced test forward holds at once
TEACHER_FORCED_LOGITS_BUDGET = 2**27
#: the most rows one teacher-forced test forward runs at once (rows of similar length together)
TEACHER_FORCED_CHUNK_ROWS = 64


class SelectionLM(pl.LightningModule):
    """A causal LM trained on what a selection method gives it.

    Each training step computes one loss per example (mean NLL over its target tokens) and combines them
    with coefficients from the datamodule's ``reweight`` hook (by default the selection weights divided by
    the batch size, i.e. a weighted mean); the coefficients are computed from detached losses. Testing
    generates greedily from each prompt and checks the answer with ``evaluator``, and in the same pass scores
    the reference solution and its answer by teacher forcing (``p3bench.eval.likelihood``); for the ``lm`` task
    (pre-training text, arXiv 2402.09668) it scores each test document by teacher forcing instead and
    reports held-out perplexity (:func:`perplexity_metrics`), and validation also logs ``val/perplexity``.
    For the ``instruction`` task the generated responses are scored against the references instead of
    checked (:mod:`p3bench.eval.instruction`: ROUGE-L per batch; embedding similarity and the optional judge
    once over all test records at the end of the epoch, with the settings the dataset recorded).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Mapping[str, Any] | None = None,
        evaluator: Callable[[str, Any], bool] | None = None,
        max_new_tokens: int = 64,
        test_sampling: Mapping[str, Any] | None = None,
        seed: int = 0,
        task: str = "qa",
    ) -> None:
        super().__init__()
        check_task_evaluator(task, evaluator)
        self.task = task
        self.model = model
        self.tokenizer = tokenizer
        self.optimizer_factory = optimizer
        self.scheduler_cfg = dict(scheduler) if scheduler else None
        self.evaluator = evaluator
        self.max_new_tokens = max_new_tokens
        sampling = dict(test_sampling or {})
        self.test_samples = int(sampling.get("n", 0))
        self.sample_temperature = float(sampling.get("temperature", 0.8))
        self.sample_top_p = float(sampling.get("top_p", 0.95))
        self.pass_at = sorted({int(k) for k in sampling.get("pass_at_k", [1]) if int(k) <= self.test_samples})
        self.seed = int(seed)
        self.train_tokens = 0
        self.train_target_tokens = 0
        self.train_examples = 0
        # this process's timed training and scoring batches (p3bench.throughput)
        self.throughput = Throughput()
        self.test_records: list[dict[str, Any]] = []
        self._val_nll = 0.0
        self._val_tokens = 0
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    # training ---------------------------------------------------------------------------------------------
    def per_example_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return per_example_nll(logits, batch["labels"])

    def loss_coefficients(self, losses: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        datamodule = self._datamodule()
        if datamodule is not None and hasattr(datamodule, "reweight"):
            return datamodule.reweight(losses.detach(), batch).detach()
        return batch["weight"] / batch["weight"].numel()

    def _datamodule(self) -> Any | None:
        return getattr(self.trainer, "datamodule", None) if self._trainer is not None else None

    def micro_batch_group(self) -> int:
        """How many micro-batches are weighted together: the trainer's ``accumulate_grad_batches`` when the
        method asks for one weighting per optimizer step (``groups_micro_batches``), else 1."""
        datamodule = self._datamodule()
        if datamodule is None or not getattr(datamodule, "groups_micro_batches", False):
            return 1
        return int(self.trainer.accumulate_grad_batches)

    def _step_ends_here(self) -> bool:
        """Whether Lightning takes an optimizer step after this micro-batch (the end of an accumulation
        group, or the last batch of the epoch): Lightning's own decision, so the two never disagree."""
        return not self.trainer.fit_loop.epoch_loop._should_accumulate()

    def _zero_loss(self) -> torch.Tensor:
        """A zero loss attached to the smallest trainable parameter: what a micro-batch whose loss is kept
        for later returns, so that its backward adds nothing and frees none of the kept graphs (Lightning
        refuses a skipped step under DDP)."""
        smallest = min((p for p in self.model.parameters() if p.requires_grad), key=lambda p: p.numel())
        return smallest.sum() * 0.0

    def _logs_this_step(self) -> bool:
        """Whether the loggers write this step's metrics (every ``log_every_n_steps``): the weight metrics are
        only handed to Lightning then, which keeps their cost off the other steps."""
        connector = getattr(self.trainer, "_logger_connector", None)
        return bool(getattr(connector, "should_update_logs", True))

    def on_train_epoch_start(self) -> None:
        self._pending = []

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The weighted loss of a batch. When the method weights the micro-batches of an optimizer step
        together (:meth:`micro_batch_group` > 1) their losses are kept, with their graphs, until the step's
        last micro-batch, which returns the loss of all of them (one backward, as the public IR-DRO code's
        ``--patience``); the earlier ones return a zero loss (:meth:`_zero_loss`)."""
        losses = self.per_example_loss(batch)
        self.train_tokens += int(batch["attention_mask"].sum())
        self.train_target_tokens += int(target_token_counts(batch["labels"]).sum())
        self.train_examples += int(batch["input_ids"].size(0))
        size = batch["input_ids"].size(0)
        self.log("train/loss", losses.mean(), prog_bar=True, batch_size=size)
        self.log("train/tokens", float(self.train_tokens), batch_size=size)
        group = self.micro_batch_group()
        weighted: Mapping[str, torch.Tensor] = batch
        if group > 1:
            self._pending.append((losses, batch["weight"], batch["index"]))
            if not self._step_ends_here():
                return self._zero_loss()
            pending, self._pending = self._pending, []
            losses = torch.cat([p[0] for p in pending])
            weighted = {
                "weight": torch.cat([p[1] for p in pending]),
                "index": torch.cat([p[2] for p in pending]),
            }
        coefficients = self.loss_coefficients(losses, weighted).to(losses.dtype)
        loss = (coefficients * losses).sum()
        self.log("train/weighted_loss", loss, batch_size=losses.numel())
        datamodule = self._datamodule()
        metrics = datamodule.weight_metrics() if hasattr(datamodule, "weight_metrics") else {}
        if metrics and self._logs_this_step():
            self.log_dict({f"weights/{k}": float(v) for k, v in metrics.items()}, batch_size=losses.numel())
        # Lightning divides each micro-batch's loss by accumulate_grad_batches; a grouped loss is the step's
        return loss * self.trainer.accumulate_grad_batches if group > 1 else loss

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        losses = self.per_example_loss(batch)
        self.log("val/loss", losses.mean(), prog_bar=True, batch_size=losses.numel(), sync_dist=True)
        if self.task == "lm":
            counts = target_token_counts(batch["labels"])
            self._val_nll += float((losses.double() * counts).sum())
            self._val_tokens += int(counts.sum())

    def on_validation_epoch_start(self) -> None:
        self._val_nll, self._val_tokens = 0.0, 0

    def on_validation_epoch_end(self) -> None:
        """``val/perplexity`` for the lm task: exp of the NLL per token over every validation token (summed
        over processes, so it is token-weighted under DDP too)."""
        if self.task != "lm":
            return
        totals = torch.tensor(
            [self._val_nll, float(self._val_tokens)], dtype=torch.float64, device=self.device
        )
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(totals)
        nll, tokens = totals.tolist()
        if tokens > 0:
            self.log("val/perplexity", _safe_exp(nll / tokens), sync_dist=True)

    # testing: greedy generation and answer checking --------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[str]:
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        return self.tokenizer.batch_decode(output[:, input_ids.size(1) :], skip_special_tokens=True)

    def on_test_epoch_start(self) -> None:
        self.test_records = []

    @torch.no_grad()
    def sample(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int, seed: int) -> list[str]:
        """``n`` sampled continuations per prompt (grouped by prompt), seeded, leaving the global RNG alone."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=self.max_new_tokens,
                do_sample=True,
                temperature=self.sample_temperature,
                top_p=self.sample_top_p,
                num_return_sequences=n,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
        return self.tokenizer.batch_decode(output[:, input_ids.size(1) :], skip_special_tokens=True)

    def check(self, text: str, example: Any) -> dict[str, Any]:
        """The evaluator's verdict, with its numeric details when it offers them (``evaluator.details``,
        e.g. the test-case average of a program)."""
        details = getattr(self.evaluator, "details", None)
        if details is None:
            return {"correct": bool(self.evaluator(text, example))}
        record = dict(details(text, example))
        record["correct"] = bool(record["correct"])
        return record

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        if self.task == "lm":
            self.lm_test_step(batch)
            return
        if self.task == "instruction":
            texts = self.generate(batch["input_ids"], batch["attention_mask"])
            continuous = self.continuous_test_fields(batch)
            self.test_records.extend(instruction_test_records(list(batch["examples"]), texts, continuous))
            return
        if self.evaluator is None:
            raise RuntimeError("testing needs an evaluator for the dataset's answers")
        check_task_evaluator(self.task, self.evaluator)
        texts = self.generate(batch["input_ids"], batch["attention_mask"])
        samples: list[str] = []
        if self.test_samples > 0:
            seed = self.seed * 1_000_003 + int(batch["index"][0])
            samples = self.sample(batch["input_ids"], batch["attention_mask"], self.test_samples, seed)
        continuous = self.continuous_test_fields(batch)
        n = self.test_samples
        for row, (text, example) in enumerate(zip(texts, batch["examples"], strict=True)):
            record = {"id": example.id, "level": example.meta.get("level"), **self.check(text, example)}
            record.update(continuous[row])
            if n:
                pairs = [(t, example) for t in samples[row * n : (row + 1) * n]]
                correct = sum(check_all(self.evaluator, pairs))
                record["samples_correct"] = correct
                record.update({f"pass@{k}": pass_at_k(n, correct, k) for k in self.pass_at})
            record.update(generated=text, answer=example.answer)
            self.test_records.append(record)

    @torch.no_grad()
    def continuous_test_fields(self, batch: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The teacher-forced continuous metrics of each example of a test batch (``solution_nll``,
        ``solution_bpb``, ``answer_nll``, ``answer_prob``, ``answer_bpb``, ``answer_located``; see
        :mod:`p3bench.eval.likelihood`), from the batch's ``teacher_*`` inputs (prompt + target, right-padded,
        as in training). The rows are run sorted by length in chunks of at most
        :data:`TEACHER_FORCED_CHUNK_ROWS`, each cut to its longest row (less padding to compute; right padding
        never changes the logits of the tokens before it) and kept within
        :data:`TEACHER_FORCED_LOGITS_BUDGET` logits."""
        input_ids, attention_mask, labels = (
            batch["teacher_input_ids"],
            batch["teacher_attention_mask"],
            batch["teacher_labels"],
        )
        lengths = attention_mask.sum(dim=1)
        order = torch.argsort(lengths).tolist()
        row_lengths = lengths.tolist()
        vocab = int(getattr(self.model.config, "vocab_size", 0) or len(self.tokenizer))
        rows = min(
            TEACHER_FORCED_CHUNK_ROWS,
            max(1, TEACHER_FORCED_LOGITS_BUDGET // max(1, input_ids.size(1) * vocab)),
        )
        target_nll: list[list[float]] = [[] for _ in order]
        for start in range(0, len(order), rows):
            chunk = order[start : start + rows]
            width = max(row_lengths[i] for i in chunk)
            index = torch.tensor(chunk, device=input_ids.device)
            logits = self.model(
                input_ids=input_ids[index, :width], attention_mask=attention_mask[index, :width]
            ).logits
            for row, values in zip(chunk, target_token_nll(logits, labels[index, :width]), strict=True):
                target_nll[row] = values
        layouts = target_layouts(self.tokenizer, list(batch["examples"]))
        return [continuous_fields(nll, layout) for nll, layout in zip(target_nll, layouts, strict=True)]

    @torch.no_grad()
    def lm_test_step(self, batch: Mapping[str, Any]) -> None:
        """Teacher-forced NLL of each test document: the sum over its target tokens and their count (every
        token after BOS, up to ``max_length``), recorded per document with its domain."""
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        counts = target_token_counts(batch["labels"])
        sums = per_example_nll(logits, batch["labels"]).double() * counts
        for example, nll_sum, n_tokens in zip(batch["examples"], sums.tolist(), counts.tolist(), strict=True):
            record: dict[str, Any] = {"id": example.id}
            if example.meta.get("level") is not None:
                record["level"] = example.meta["level"]
            record.update(domain=example.meta.get("domain"), nll_sum=float(nll_sum), n_tokens=int(n_tokens))
            self.test_records.append(record)

    def on_test_epoch_end(self) -> None:
        records = self.test_records
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[list[dict[str, Any]]] = [[] for _ in range(torch.distributed.get_world_size())]
            torch.distributed.all_gather_object(gathered, records)
            # the distributed sampler pads the last shard with repeats: keep each example once
            unique = {r["id"]: r for part in gathered for r in part}
            records = sorted(unique.values(), key=lambda r: r["id"])
            self.test_records = records
        if self.task == "lm":
            metrics = perplexity_metrics(records)
        elif self.task == "instruction":
            if not self.trainer.is_global_zero:
                return  # the embedder and the judge run once, on the gathered records of global rank zero
            metrics = self.instruction_epoch_end(records)
        else:
            metrics = {**accuracy_by_level(records), **metric_uncertainty(records)}
        for name, value in metrics.items():
            self.log(f"test/{name}", value, rank_zero_only=True)

    def instruction_epoch_end(self, records: list[dict[str, Any]]) -> dict[str, float]:
        """The instruction task's test metrics: embedding similarity and the judge's scores added to the
        records (settings from the dataset's ``info``), then every metric's mean and standard error."""
        splits = getattr(self._datamodule(), "splits", None)
        settings = settings_from_info(getattr(splits, "info", None))
        counts = add_epoch_end_scores(records, settings, device=self.device)
        return {**instruction_metrics(records), **counts}

    # optimisation ------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if not self.scheduler_cfg:
            return optimizer
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError(
                "a learning-rate schedule needs a finite number of steps (set max_steps or max_epochs)"
            )
        warmup = int(math.ceil(float(self.scheduler_cfg.get("warmup_ratio", 0.0)) * total))
        scheduler = get_scheduler(
            self.scheduler_cfg.get("name", "linear"),
            optimizer,
            num_warmup_steps=warmup,
            num_training_steps=int(total),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # checkpointed counters -----------------------------------------------------------------------------------
    def local_counters(self) -> dict[str, int]:
        """Token and example counters of this process."""
        return {
            "train_tokens": self.train_tokens,
            "train_target_tokens": self.train_target_tokens,
            "train_examples": self.train_examples,
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["p3bench_counters"] = self.local_counters()

    def global_counters(self) -> dict[str, int]:
        """Token and example counters summed over all processes."""
        counters = self.local_counters()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            values = torch.tensor(list(counters.values()), dtype=torch.long, device=self.device)
            torch.distributed.all_reduce(values)
            counters = dict(zip(counters, values.tolist(), strict=True))
        return counters

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        counters = checkpoint.get("p3bench_counters", {})
        self.train_tokens = int(counters.get("train_tokens", 0))
        self.train_target_tokens = int(counters.get("train_target_tokens", 0))
        self.train_examples = int(counters.get("train_examples", 0))


def target_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> list[list[float]]:
    """The NLL (nats) of each target token of each row, in order: position ``t`` of ``logits`` predicts token
    ``t + 1``; ``labels`` holds the target token ids and ``IGNORE_INDEX`` elsewhere (as for
    :func:`p3bench.models.losses.per_example_nll`, whose per-row mean this is)."""
    shift_labels = labels[:, 1:]
    token_nll = F.cross_entropy(
        logits[:, :-1, :].float().reshape(-1, logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(shift_labels)
    token_nll, mask = token_nll.double().cpu(), (shift_labels != IGNORE_INDEX).cpu()
    return [row[keep].tolist() for row, keep in zip(token_nll, mask, strict=True)]


NOT_METRICS = ("id", "level", "correct", "generated", "answer", "samples_correct")
#: means over test examples that get no standard error: accuracy has its Wilson interval instead, and
#: ``answer_located`` is the share of answers found in their reference solutions (data, not model quality)
NO_STANDARD_ERROR = ("accuracy", "answer_located")


def per_example_values(records: list[dict[str, Any]]) -> dict[str, list[tuple[Any, float]]]:
    """For ``accuracy`` (from ``correct``) and every other numeric field of the records, the (level, value)
    of each record that has it: the per-example values the test metrics are means of."""
    fields = ["accuracy"] + sorted(
        {k for r in records for k, v in r.items() if k not in NOT_METRICS and isinstance(v, (int, float))}
    )
    values = {}
    for name in fields:
        key = "correct" if name == "accuracy" else name
        values[name] = [
            (r.get("level"), float(r[key])) for r in records if isinstance(r.get(key), (bool, int, float))
        ]
    return values


def accuracy_by_level(records: list[dict[str, Any]]) -> dict[str, float]:
    """Overall accuracy, per-level accuracy (``accuracy_level_K``) and the count of checked examples, and
    the same for every other numeric field the records carry (``test_case_average``, ``pass@k``, the
    continuous metrics ``solution_nll`` ... ``answer_bpb``, and ``answer_located``, the share of answers
    found), each over the records that carry it."""
    if not records:
        return {}
    metrics = {"n_examples": float(len(records))}
    for name, pairs in per_example_values(records).items():
        if not pairs:
            continue
        by_level: dict[Any, list[float]] = defaultdict(list)
        for level, value in pairs:
            by_level[level].append(value)
        metrics[name] = math.fsum(v for _, v in pairs) / len(pairs)
        for level in sorted(k for k in by_level if k is not None):
            metrics[f"{name}_level_{level}"] = math.fsum(by_level[level]) / len(by_level[level])
    return metrics


def metric_uncertainty(records: list[dict[str, Any]]) -> dict[str, float]:
    """The uncertainty of the run's overall test metrics over its test examples: ``accuracy_ci_low`` and
    ``accuracy_ci_high`` (the Wilson 95% interval of the share solved), and ``<name>_se`` (the standard error
    of the mean over the examples that carry it) for every other mean :func:`accuracy_by_level` reports,
    except those in :data:`NO_STANDARD_ERROR`. Per-level means get none; a mean over fewer than two
    examples gets no standard error."""
    metrics: dict[str, float] = {}
    for name, pairs in per_example_values(records).items():
        values = [v for _, v in pairs]
        if name == "accuracy" and values:
            metrics["accuracy_ci_low"], metrics["accuracy_ci_high"] = wilson_interval(
                int(round(math.fsum(values))), len(values)
            )
        elif name not in NO_STANDARD_ERROR:
            _, se = mean_and_se(values)
            if math.isfinite(se):
                metrics[f"{name}_se"] = se
    return metrics


def check_task_evaluator(task: str, evaluator: Any) -> None:
    """The lm task is scored by teacher forcing (the ``perplexity`` evaluator, or none), the instruction task
    against reference responses (the ``instruction`` evaluator, or none); qa and code by checking generated
    text, never by either of those. A mismatch is a one-line :class:`ConfigError`."""
    if task not in TASK_KINDS:
        raise ConfigError(f"task={task!r} is not a task kind: expected one of {', '.join(TASK_KINDS)}")
    teacher_forced = bool(getattr(evaluator, "teacher_forced", False))
    reference_scored = bool(getattr(evaluator, "reference_scored", False))
    name = getattr(evaluator, "__name__", type(evaluator).__name__)
    if task == "instruction" and evaluator is not None and not reference_scored:
        raise ConfigError(
            f"the dataset's task is 'instruction' but its evaluator ({name}) does not score responses "
            "against references: expected dataset.evaluator=instruction"
        )
    if task != "instruction" and reference_scored:
        raise ConfigError(
            "evaluator 'instruction' scores responses against references but the dataset's task is "
            f"{task!r}: expected the dataset's own evaluator"
        )
    if task == "lm" and evaluator is not None and not teacher_forced:
        raise ConfigError(
            f"the dataset's task is 'lm' but its evaluator ({name}) checks generated answers: expected "
            "dataset.evaluator=perplexity (held-out perplexity by teacher forcing)"
        )
    if task != "lm" and teacher_forced:
        raise ConfigError(
            f"evaluator 'perplexity' scores pre-training text but the dataset's task is {task!r}: expected the "
            "dataset's answer evaluator"
        )


def _safe_exp(value: float) -> float:
    return math.exp(value) if value < 700 else math.inf


def metric_safe(name: Any) -> str:
    """A domain as a metric-name part: lowercase letters, digits and ``_`` (``"Wikipedia (en)"`` ->
    ``"wikipedia_en"``, ``"Pile-CC"`` -> ``"pile_cc"``)."""
    return re.sub(r"[^0-9a-z]+", "_", str(name).lower()).strip("_") or "unnamed"


def perplexity_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    """Held-out perplexity from per-document ``nll_sum`` and ``n_tokens``: ``loss`` (mean NLL per token over
    all tokens), ``perplexity = exp(loss)``, ``perplexity_domain_<domain>`` for each domain (metric-safe
    names; two domains that read the same get ``_2``, ``_3`` suffixes in sorted order), ``n_examples`` and
    ``n_tokens``. Documents are weighted by their token counts (corpus perplexity, arXiv 2402.09668)."""
    if not records:
        return {}
    nll = sum(float(r["nll_sum"]) for r in records)
    tokens = sum(int(r["n_tokens"]) for r in records)
    metrics = {"n_examples": float(len(records)), "n_tokens": float(tokens)}
    if tokens == 0:
        return metrics
    metrics["loss"] = nll / tokens
    metrics["perplexity"] = _safe_exp(nll / tokens)
    by_domain: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for r in records:
        if r.get("domain") is not None:
            by_domain[str(r["domain"])][0] += float(r["nll_sum"])
            by_domain[str(r["domain"])][1] += int(r["n_tokens"])
    used: Counter[str] = Counter()
    for domain in sorted(by_domain):
        domain_nll, domain_tokens = by_domain[domain]
        base = metric_safe(domain)
        used[base] += 1
        key = base if used[base] == 1 else f"{base}_{used[base]}"
        if domain_tokens > 0:
            metrics[f"perplexity_domain_{key}"] = _safe_exp(domain_nll / domain_tokens)
    return metrics
