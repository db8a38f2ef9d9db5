"""A text corpus in Parquet, Arrow, JSON lines or CSV files as an ``lm`` pool that stays on disk.

``dataset=corpus_files`` reads the files with Hugging Face ``datasets`` (``load_dataset("parquet", ...)``
and its siblings: the packaged builders, nothing downloaded), which converts them once into Arrow files in
its cache and memory-maps them. The validation and test documents (seeded, a few thousand at most) become
examples in memory; the train pool is written by ``datasets.map`` into a pool file
(:mod:`p3bench.data.arrow_pool`) under ``cache_dir/pools`` and read lazily, so no list of the pool's
documents is ever built: this is the route for pools of millions of documents (corpus shards as the
19-sampler study's C4, arXiv 2402.09668, ships them). Ids are a column of the files, or ``doc-<row>`` (the
row in the concatenated files, in sorted file order).

The pool file is written by one process (``datasets.map`` with ``num_proc`` writes one file per
process, not the one file the pool is); tokenising it later uses ``pool.num_proc`` processes.
The pool file is named by a hash of the source files' ``datasets`` fingerprint (paths and modification
times), the columns read and the split settings, so a second run with the same files and settings opens
it without reading the files again.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from p3bench.data.arrow_pool import POOL_SCHEMA, ArrowPool, datasets_progress
from p3bench.data.example import DatasetSplits, Example
from p3bench.errors import ConfigError, DataError

#: file extension -> the ``datasets`` packaged builder that reads it
BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def _files(data_files: Any) -> list[str]:
    patterns = [data_files] if isinstance(data_files, str) else list(data_files or [])
    if not patterns:
        raise ConfigError("dataset.params.data_files is empty: expected a path, a glob or a list of them")
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(glob.glob(str(pattern)))
        if not matched:
            raise ConfigError(
                f"dataset.params.data_files={pattern!r} matches no file: expected existing files"
            )
        files.extend(matched)
    return files


def _builder(files: Sequence[str], file_format: str | None) -> str:
    if file_format is not None:
        if file_format not in set(BUILDERS.values()):
            raise ConfigError(
                f"dataset.params.format={file_format!r} is not supported: expected one of "
                f"{', '.join(sorted(set(BUILDERS.values())))} or null (from the file extension)"
            )
        return file_format
    kinds = {BUILDERS.get(Path(f).suffix) for f in files}
    if None in kinds or len(kinds) != 1:
        raise ConfigError(
            f"dataset.params.data_files mixes or has unknown extensions ({sorted({Path(f).suffix for f in files})}): "
            f"expected files of one kind among {', '.join(BUILDERS)} or dataset.params.format"
        )
    return kinds.pop()  # type: ignore[return-value]


def _count(value: int | float, n: int, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(
            f"dataset.params.{key}={value!r} is invalid: expected a count >= 0 or a fraction in [0, 1)"
        )
    if isinstance(value, float):
        if value >= 1:
            raise ConfigError(
                f"dataset.params.{key}={value!r} is invalid: expected a fraction in [0, 1) or a count"
            )
        return int(round(value * n))
    return int(value)


def _rows_to_pool(
    batch: dict[str, list[Any]],
    indices: list[int],
    *,
    text_field: str,
    id_field: str | None,
    domain_field: str | None,
    meta_fields: Sequence[str],
    source: str,
    row_numbers: np.ndarray | None = None,
) -> dict[str, list[Any]]:
    """Pool rows (the :data:`POOL_SCHEMA` columns) of a batch of source rows; ``indices`` are positions in
    the dataset mapped over, ``row_numbers`` their rows in the source files (the default ids)."""
    texts = batch[text_field]
    n = len(texts)
    rows = indices if row_numbers is None else [int(row_numbers[i]) for i in indices]
    ids = [str(v) for v in batch[id_field]] if id_field else [f"doc-{i}" for i in rows]
    metas = []
    for row in range(n):
        meta = {"domain": batch[domain_field][row] if domain_field else None, "source": source}
        meta.update({name: batch[name][row] for name in meta_fields})
        try:
            metas.append(json.dumps(meta, sort_keys=True, ensure_ascii=False))
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"dataset.params.meta_fields has a column whose values JSON cannot hold ({exc}): expected "
                "strings, numbers, booleans, lists or dicts"
            ) from exc
    return {
        "id": ids,
        "prompt": [""] * n,
        "target": ["" if t is None else str(t) for t in texts],
        "answer": [None] * n,
        "tests": [None] * n,
        "meta": metas,
    }


def load_corpus_files(
    data_files: Any,
    format: str | None = None,
    text_field: str = "text",
    id_field: str | None = None,
    domain_field: str | None = None,
    meta_fields: Sequence[str] = (),
    val_size: int | float = 1000,
    test_size: int | float = 1000,
    max_train: int | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
) -> DatasetSplits:
    """The documents of ``data_files`` as ``lm`` splits; the train pool an :class:`ArrowPool` on disk.

    ``val_size``/``test_size`` are counts or fractions drawn at random (``seed``) from all rows;
    ``max_train`` keeps that many of the rest (a seeded random subset, in file order). ``meta_fields``
    are copied into each example's ``meta`` (with ``domain`` from ``domain_field`` and ``source``)."""
    import datasets

    files = _files(data_files)
    builder = _builder(files, format)
    if cache_dir is None:
        raise ConfigError("dataset.params.cache_dir is null: expected a directory for the pool's Arrow files")
    cache = Path(cache_dir)
    with datasets_progress():
        source = datasets.load_dataset(
            builder, data_files=files, split="train", cache_dir=str(cache / "hf_datasets")
        )
    meta_fields = list(meta_fields or [])
    for key, column in (("text_field", text_field), ("id_field", id_field), ("domain_field", domain_field)):
        if column is not None and column not in source.column_names:
            raise ConfigError(
                f"dataset.params.{key}={column!r} is not a column of {files[0]}: expected one of "
                f"{', '.join(source.column_names)}"
            )
    for column in meta_fields:
        if column not in source.column_names:
            raise ConfigError(
                f"dataset.params.meta_fields has {column!r}, not a column: expected among {', '.join(source.column_names)}"
            )
    n = source.num_rows
    n_val, n_test = _count(val_size, n, "val_size"), _count(test_size, n, "test_size")
    if n_val + n_test >= n:
        raise DataError(
            f"corpus_files: {n} documents leave none to train on after {n_val} + {n_test} held out"
        )
    order = np.random.default_rng(int(seed)).permutation(n)
    val_rows, test_rows = np.sort(order[:n_val]), np.sort(order[n_val : n_val + n_test])
    rest = order[n_val + n_test :]
    if max_train is not None:
        if isinstance(max_train, bool) or not isinstance(max_train, int) or max_train < 0:
            raise ConfigError(
                f"dataset.params.max_train={max_train!r} is invalid: expected a count >= 0 or null"
            )
        rest = rest[:max_train]
    train_rows = np.sort(rest)
    options = {
        "text_field": text_field,
        "id_field": id_field,
        "domain_field": domain_field,
        "meta_fields": meta_fields,
        "source": "corpus_files",
    }

    def examples(rows: np.ndarray) -> list[Example]:
        part = source.select(rows)
        converted = _rows_to_pool(part.to_dict(), [int(r) for r in rows], **options)
        return [
            Example(id=i, prompt="", target=t, meta=json.loads(m))
            for i, t, m in zip(converted["id"], converted["target"], converted["meta"], strict=True)
        ]

    key_source = json.dumps(
        [
            source._fingerprint,
            options,
            int(seed),
            n_val,
            n_test,
            None if max_train is None else int(max_train),
        ]
    )
    key = hashlib.sha256(key_source.encode()).hexdigest()
    pools = cache / "pools"
    pools.mkdir(parents=True, exist_ok=True)
    path = pools / f"{key}.arrow"
    if not path.exists():
        with datasets_progress():
            source.select(train_rows).map(
                _rows_to_pool,
                batched=True,
                batch_size=10_000,
                with_indices=True,
                fn_kwargs={**options, "row_numbers": train_rows},
                remove_columns=source.column_names,
                features=datasets.Features.from_arrow_schema(POOL_SCHEMA),
                cache_file_name=str(path),
                new_fingerprint=key,
                desc="writing the pool",
            )
    train = ArrowPool(path)
    if len(set(train.ids)) != len(train):
        raise DataError(
            f"corpus_files: dataset.params.id_field={id_field!r} has duplicate ids: expected unique ids"
        )
    return DatasetSplits(
        name="corpus_files",
        task="lm",
        train=train,
        validation=examples(val_rows),
        test=examples(test_rows),
        info={"files": len(files), "rows": n, "pool_file": str(path)},
    )
