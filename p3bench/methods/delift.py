"""DELIFT (Agarwal et al., "DELIFT: Data Efficient Language model Instruction Fine-Tuning", arXiv
2411.04425, ICLR 2025): submodular selection over a kernel of pairwise utilities, one objective per
fine-tuning stage.

- ``stage=instruction``: facility location over the pool, ``f(A) = sum_i max_{j in A} s_ij``;
- ``stage=task``: facility-location mutual information with a target set ``D_T`` (the dataset's validation
  split: pair a pool with another task's validation and test splits with ``dataset=instruction_transfer``);
- ``stage=continual``: facility-location conditional gain against data the model has already seen ``D_E``
  (``method.existing``), ``f(A | D_E) = sum_i max(max_{j in A} s_ij - nu max_{k in D_E} s_ik, 0)``.

``delift`` fills the kernel with the in-context utility of the model being fine-tuned
(:mod:`p3bench.scoring.icl_utility`: ``s_ij`` = how much example ``j`` shown as the one demonstration helps
the model predict example ``i``'s response, min-max scaled as the public code does); ``delift_se`` with the
cosine similarity of sentence embeddings scaled to [0, 1] as ``(cos + 1) / 2`` (the paper's DELIFT (SE),
with the packaged MiniLM in place of BGE). Both maximise with lazy greedy by default (the code's
``LazyGreedy``) at the budget (the paper's configs: 30%), :mod:`p3bench.algorithms.submodular`.

Departures from the paper and its public code (``../shared/papers/delift_multiagent.md``, part A): the
kernel is the code's teacher-forced (non-vLLM) version; FLMI defaults to submodlib's "min" form, which the
code calls (``method.mi_form=additive`` is the printed form); the task stage's query kernel is built as
``U(target q, candidate j)`` (the candidate as the demonstration), since the code's wiring of the benchmark
set is unclear; each kernel (pool x pool, targets x pool, pool x existing) is min-max scaled on its own, as
the code scales every kernel before submodlib sees it. The model that scores the kernel is the run's model
before training (DELIFT is model-dependent: use a model that already answers instructions and has not seen
the pool: ``experiment=delift_run`` pre-trains the tiny model on Dolly, ``model.warm_start.corpus=dataset``;
a hub model with LoRA on a GPU, ``experiment=delift_paper``); for the continual stage the paper's model has
already been fine-tuned on ``D_E``, which ``experiment=delift_continual`` does by pre-training on it. The
kernel's sequences are cut at ``kernel_max_length`` tokens (the code's 2,048, capped at the model's
positions), not at the dataset's training ``max_length``.

Every selection records what shows that the objective does what its name says: its value on the pick
against random subsets of the same size and against the top-k by mean utility (what a pick without the
submodular coverage term would be), the pick's overlap with that top-k, and for the task stage how well the
pick covers the target set (the mean over targets of the best utility in the pick).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
from scipy import sparse

from p3bench.algorithms.submodular import evaluate, maximize
from p3bench.compute import RUN_MODEL, model_size, record_embedding
from p3bench.data.example import Example
from p3bench.data.named import check_spec, examples_from_spec
from p3bench.embeddings import build_embedder
from p3bench.errors import ConfigError
from p3bench.methods.base import Selection, SelectionContext, SelectionDataModule
from p3bench.methods.options import choice
from p3bench.methods.pool_scoring import TEXT_FIELDS, example_text
from p3bench.sharded import sharded_embeddings_counted

STAGES = ("instruction", "task", "continual")
#: the submodular objective of each stage (arXiv 2411.04425, Eqs. 3-5)
STAGE_OBJECTIVES = {"instruction": "fl", "task": "flmi", "continual": "flcg"}
OPTIMIZERS = ("naive", "lazy", "stochastic")
MI_FORMS = ("min", "additive")
#: random subsets the pick's objective value is compared with (diagnostics)
RANDOM_SUBSETS = 5


def positive_int(key: str, value: Any) -> int:
    """``value`` when it is an integer >= 1, else a one-line error naming ``method.<key>``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"method.{key}={value!r} is invalid: expected an integer >= 1")
    return value


def kernel_view(example: Example) -> Example:
    """The example as the kernel sees it: for instruction data the bare instruction (and its input) as the
    query, without the training prompt's template, since DELIFT's own prompts wrap it (the public code
    passes the dataset's raw instruction); other examples as they are."""
    instruction = example.meta.get("instruction")
    if instruction is None:
        return example
    given = example.meta.get("input")
    return replace(example, prompt=f"{instruction}\n{given}" if given else str(instruction))


def dense(kernel: Any) -> np.ndarray:
    """A kernel as a dense float32 array (diagnostics of small kernels)."""
    return np.asarray(kernel.toarray() if sparse.issparse(kernel) else kernel, dtype=np.float32)


class SubmodularSelection(SelectionDataModule):
    """The stage's objective over a kernel of the pool; subclasses say how the kernel is filled
    (:meth:`kernel`)."""

    name: ClassVar[str] = "submodular_selection"

    def __init__(
        self,
        *args: Any,
        stage: str = "instruction",
        existing: Mapping[str, Any] | None = None,
        optimizer: str = "lazy",
        epsilon: float = 0.01,
        mi_form: str = "min",
        eta: float = 1.0,
        nu: float = 1.0,
        max_targets: int | None = None,
        progress: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.stage = choice("stage", stage, STAGES)
        self.optimizer = choice("optimizer", optimizer, OPTIMIZERS)
        self.mi_form = choice("mi_form", mi_form, MI_FORMS)
        for key, value in (("eta", eta), ("nu", nu)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"method.{key}={value!r} is invalid: expected a number >= 0")
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 < epsilon < 1:
            raise ConfigError(f"method.epsilon={epsilon!r} is invalid: expected a number in (0, 1)")
        if max_targets is not None and (
            isinstance(max_targets, bool) or not isinstance(max_targets, int) or max_targets < 1
        ):
            raise ConfigError(
                f"method.max_targets={max_targets!r} is invalid: expected an integer >= 1 or null"
            )
        self.epsilon, self.eta, self.nu = float(epsilon), float(eta), float(nu)
        self.max_targets = max_targets
        self.progress = bool(progress)
        self.existing_cfg = dict(existing or {})
        self._sentence_embedder: Any = None
        if self.stage == "task" and not self.target:
            raise ConfigError(
                f"method.stage=task needs a target set: dataset={self.splits.name!r} has an empty validation "
                "split (set its val_size, or pair a pool with a target task: dataset=instruction_transfer)"
            )
        if self.stage == "continual":
            check_spec(self.existing_cfg, "method.existing")

    # what subclasses implement -------------------------------------------------------------------------------
    def kernel(
        self, ctx: SelectionContext, rows: Sequence[Example], columns: Sequence[Example], role: str
    ) -> tuple[Any, int, dict[str, Any]]:
        """``s[i, j]`` for ``rows`` i (covered) and ``columns`` j (candidates), scaled into [0, 1]: a dense
        array or a CSR matrix, the forward tokens it took and what to record about it."""
        raise NotImplementedError

    def sentence_embedder(self) -> Any:
        """The method's sentence embedder (``embedder``, ``embedder_kwargs``), built once: the pool's kernel
        and the target's or existing data's use the same one."""
        if self._sentence_embedder is None:
            options = {"progress": self.progress, **self.embedder_kwargs}
            self._sentence_embedder = build_embedder(self.embedder, **options)
        return self._sentence_embedder

    # the sets ------------------------------------------------------------------------------------------------
    def targets(self) -> list[Example]:
        target = list(self.target)
        return target if self.max_targets is None else target[: self.max_targets]

    def existing(self) -> list[Example]:
        return examples_from_spec(self.existing_cfg, "method.existing")

    # selection -----------------------------------------------------------------------------------------------
    def select(self, ctx: SelectionContext) -> Selection:
        pool = self.pool
        data_kernel, tokens, info = self.kernel(ctx, pool, pool, "pool")
        diagnostics: dict[str, Any] = {"stage": self.stage, "kernel": {"pool": info}}
        extra: dict[str, Any] = {}
        if self.stage == "task":
            targets = self.targets()
            query, more, query_info = self.kernel(ctx, targets, pool, "target")
            tokens += more
            extra["query_kernel"] = query
            diagnostics["kernel"]["target"] = {**query_info, "n_targets": len(targets)}
        elif self.stage == "continual":
            existing = self.existing()
            private, more, private_info = self.kernel(ctx, pool, existing, "existing")
            tokens += more
            extra["private_kernel"] = private
            diagnostics["kernel"]["existing"] = {**private_info, "n_existing": len(existing)}
        objective = STAGE_OBJECTIVES[self.stage]
        options = dict(eta=self.eta, nu=self.nu, mi_form=self.mi_form)
        result = maximize(
            objective,
            data_kernel,
            self.budget_size,
            optimizer=self.optimizer,
            epsilon=self.epsilon,
            seed=self.seed,
            progress=self.progress,
            **extra,
            **options,
        )
        chosen = np.asarray(result.indices, dtype=np.int64)
        gains = np.asarray(result.gains, dtype=np.float64)
        diagnostics.update(
            objective=objective,
            optimizer=self.optimizer,
            **({"mi_form": self.mi_form, "eta": self.eta} if objective == "flmi" else {}),
            **({"nu": self.nu} if objective == "flcg" else {}),
            gains={"first": float(gains[0]), "last": float(gains[-1]), "n_zero": int(np.sum(gains <= 0))},
            check=self.objective_check(objective, data_kernel, chosen, extra, options, ctx.rng),
        )
        order = np.argsort(chosen, kind="stable")
        return Selection(
            ids=[pool[i].id for i in chosen[order].tolist()],
            # the marginal gain each example brought when greedy picked it
            scores=gains[order].tolist(),
            diagnostics=diagnostics,
            forward_tokens=tokens,
        )

    def objective_check(
        self,
        objective: str,
        data_kernel: Any,
        chosen: np.ndarray,
        extra: dict[str, Any],
        options: dict[str, Any],
        rng: np.random.Generator,
    ) -> dict[str, Any]:
        """The pick's objective value against random subsets of its size and against the top-k by mean
        utility to the pool (the best single examples, no coverage), and its overlap with that top-k."""
        n, k = len(self.pool), len(chosen)

        def value(indices: np.ndarray) -> float:
            return float(evaluate(objective, data_kernel, indices, **extra, **options))

        mean_utility = np.asarray(data_kernel.mean(axis=0), dtype=np.float64).ravel()
        top_k = np.lexsort((np.arange(n), -mean_utility))[:k]
        randoms = [value(rng.choice(n, size=k, replace=False)) for _ in range(RANDOM_SUBSETS)]
        check = {
            "value": value(chosen),
            "random_value_mean": float(np.mean(randoms)),
            "random_value_max": float(np.max(randoms)),
            "top_k_value": value(top_k),
            "overlap_with_top_k": float(np.isin(chosen, top_k).mean()),
            "random_overlap_expected": k / n,
        }
        if objective == "flmi":
            query = extra["query_kernel"]

            def coverage(indices: np.ndarray) -> float:  # mean over targets of the best utility in the pick
                return float(dense(query[:, indices]).max(axis=1).mean())

            randoms = [coverage(rng.choice(n, size=k, replace=False)) for _ in range(RANDOM_SUBSETS)]
            check.update(target_coverage=coverage(chosen), random_target_coverage=float(np.mean(randoms)))
        return check


class DELIFT(SubmodularSelection):
    """DELIFT: the stage's objective over the in-context utility kernel of the model being fine-tuned
    (module docstring). ``kernel`` options: ``kind`` (``euclidean``, the code's difference of distances, or
    ``exponential``), ``neighbours`` (compute each row's utility only for its k nearest candidates by
    sentence embedding: cost N k instead of N^2), ``batch_size``, ``max_kernel_bytes`` (a dense kernel larger
    than this is refused, naming the sparse option)."""

    name: ClassVar[str] = "delift"

    def __init__(
        self,
        *args: Any,
        kind: str = "euclidean",
        neighbours: int | None = None,
        kernel_batch_size: int = 16,
        kernel_max_length: int = 2048,
        max_kernel_bytes: int = 2 * 1024**3,
        embedder: str = "minilm",
        embedder_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        from p3bench.scoring.icl_utility import KERNEL_KINDS

        self.kind = choice("kind", kind, tuple(KERNEL_KINDS))
        if neighbours is not None and (
            isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 1
        ):
            raise ConfigError(
                f"method.neighbours={neighbours!r} is invalid: expected an integer >= 1 or null"
            )
        if (
            isinstance(kernel_batch_size, bool)
            or not isinstance(kernel_batch_size, int)
            or kernel_batch_size < 1
        ):
            raise ConfigError(
                f"method.kernel_batch_size={kernel_batch_size!r} is invalid: expected an integer >= 1"
            )
        self.neighbours = neighbours
        self.kernel_batch_size = kernel_batch_size
        self.kernel_max_length = positive_int("kernel_max_length", kernel_max_length)
        self.max_kernel_bytes = positive_int("max_kernel_bytes", max_kernel_bytes)
        self.embedder = str(embedder)
        self.embedder_kwargs = dict(embedder_kwargs or {})

    def kernel(
        self, ctx: SelectionContext, rows: Sequence[Example], columns: Sequence[Example], role: str
    ) -> tuple[Any, int, dict[str, Any]]:
        from p3bench.scoring.icl_utility import icl_utility_kernel

        if ctx.module is None:
            raise RuntimeError("method=delift needs the model being fine-tuned; run it through the Trainer")
        embedder = None if self.neighbours is None else self.sentence_embedder()
        result = icl_utility_kernel(
            ctx.module.model,
            self.tokenizer,
            [kernel_view(ex) for ex in rows],
            None if columns is rows else [kernel_view(ex) for ex in columns],  # None: pool x pool
            max_length=self.kernel_max_length,
            batch_size=self.kernel_batch_size,
            kind=self.kind,
            neighbours=self.neighbours,
            embedder=embedder,
            cache_dir=None if self.cache_dir is None else self.cache_dir / "icl_utility",
            max_kernel_bytes=self.max_kernel_bytes,
            progress=self.progress,
        )
        tokens = int(result.forward_tokens)
        if tokens:  # the run model's passes, in the round's compute
            self.compute_ledger.add(RUN_MODEL, "selection_forward", model_size(ctx.module.model), tokens)
        embedding_tokens = int(result.diagnostics.get("embedding_forward_tokens") or 0)
        if embedder is not None and embedding_tokens:  # the neighbours' sentence embedder
            record_embedding(self.compute_ledger, embedder, embedding_tokens)
            tokens += embedding_tokens
        raw = dense(result.raw) if not sparse.issparse(result.raw) else result.raw.data
        info = {
            "kind": self.kind,
            "neighbours": self.neighbours,
            "shape": [len(rows), len(columns)],
            # the unscaled utilities: how many pairs help (> 0) and their spread
            "raw_positive_share": float(np.mean(np.asarray(raw) > 0)),
            "raw_quantiles": [float(q) for q in np.quantile(np.asarray(raw), [0.0, 0.25, 0.5, 0.75, 1.0])],
            **dict(result.diagnostics),
        }
        return result.scaled, tokens, info


class DELIFTSE(SubmodularSelection):
    """DELIFT (SE): the same objectives over the cosine similarity of sentence embeddings of the examples'
    text (``text``: prompt and response by default), scaled to [0, 1] as ``(cos + 1) / 2`` (the public code's
    ``get_similarity_kernel_torch``), with the packaged MiniLM in place of BGE (``embedder``)."""

    name: ClassVar[str] = "delift_se"

    def __init__(
        self,
        *args: Any,
        embedder: str = "minilm",
        embedder_kwargs: dict[str, Any] | None = None,
        text: str = "prompt_and_target",
        max_kernel_bytes: int = 2 * 1024**3,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.embedder = str(embedder)
        self.embedder_kwargs = dict(embedder_kwargs or {})
        self.text_field = choice("text", text, TEXT_FIELDS)
        self.max_kernel_bytes = positive_int("max_kernel_bytes", max_kernel_bytes)

    def kernel(
        self, ctx: SelectionContext, rows: Sequence[Example], columns: Sequence[Example], role: str
    ) -> tuple[Any, int, dict[str, Any]]:
        size = len(rows) * len(columns) * 4
        if size > self.max_kernel_bytes:
            raise ConfigError(
                f"the {role} kernel of method=delift_se would hold {len(rows)} x {len(columns)} float32 "
                f"({size / 1024**3:.1f} GiB), over method.max_kernel_bytes={self.max_kernel_bytes}: use a "
                "smaller pool or raise the limit"
            )
        model = self.sentence_embedder()
        same = columns is rows  # the pool x pool kernel: the pool embedded once
        views = [kernel_view(ex) for ex in (rows if same else (*rows, *columns))]
        texts = [example_text(ex.prompt, ex.target, self.text_field) for ex in views]
        vectors, tokens = sharded_embeddings_counted(model, texts, self.cache_dir)
        record_embedding(self.compute_ledger, model, tokens)
        vectors = np.asarray(vectors, dtype=np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        left, right = (vectors, vectors) if same else (vectors[: len(rows)], vectors[len(rows) :])
        cosine = left @ right.T
        scaled = np.clip((cosine + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)
        info = {
            "embedder": self.embedder,
            "shape": [len(rows), len(columns)],
            "quantiles": [float(q) for q in np.quantile(scaled, [0.0, 0.25, 0.5, 0.75, 1.0])],
        }
        return scaled, int(tokens), info


class DELIFTTask(DELIFT):
    """``delift`` at the task-specific stage (FL mutual information with the target set): its own name, so
    that results and reports keep the stages apart."""

    name: ClassVar[str] = "delift_task"

    def __init__(self, *args: Any, stage: str = "task", **kwargs: Any) -> None:
        super().__init__(*args, stage=stage, **kwargs)


class DELIFTContinual(DELIFT):
    """``delift`` at the continual stage (FL conditional gain against ``method.existing``)."""

    name: ClassVar[str] = "delift_continual"

    def __init__(self, *args: Any, stage: str = "continual", **kwargs: Any) -> None:
        super().__init__(*args, stage=stage, **kwargs)


class DELIFTSETask(DELIFTSE):
    """``delift_se`` at the task-specific stage."""

    name: ClassVar[str] = "delift_se_task"

    def __init__(self, *args: Any, stage: str = "task", **kwargs: Any) -> None:
        super().__init__(*args, stage=stage, **kwargs)


class DELIFTSEContinual(DELIFTSE):
    """``delift_se`` at the continual stage."""

    name: ClassVar[str] = "delift_se_continual"

    def __init__(self, *args: Any, stage: str = "continual", **kwargs: Any) -> None:
        super().__init__(*args, stage=stage, **kwargs)
