"""A train pool on disk: Arrow files, memory-mapped through Hugging Face ``datasets``, read lazily.

``ArrowPool`` is a read-only ``Sequence[Example]``: ``pool[i]`` builds one :class:`Example` from its row,
iteration reads rows in batches, and the columns a method needs in bulk (``ids``, ``column("prompt")``) are
read straight from Arrow without building examples. Nothing but the rows in use is resident: the operating
system pages the memory-mapped file in and out, so a pool far larger than the process's memory limit can
be selected from (``tests/test_arrow_pool.py`` runs one under an address-space limit).

The rows hold the :class:`Example` fields; ``tests`` and ``meta`` are stored as JSON text so that every
dataset's metadata fits one schema (a value JSON cannot represent is refused when the pool is written,
naming the example). A pool written from examples is named by the sha256 of its content (ids, texts and
metadata in order), so the same data gives the same file and fingerprint on every machine, and two
writers of the same pool write the same bytes (the file is renamed into place, never seen half-written).

``encode_arrow_pool`` tokenises a pool with ``datasets.map`` (batched, ``num_proc`` processes), cached
next to the pool by the pool's fingerprint and the tokenizer's digest; the result is an
:class:`ArrowEncodedPool` with the interface of :class:`p3bench.models.collate.EncodedPool` (``prompt_ids[i]``,
``target_ids[i]``, ``num_tokens``), each row read when a batch needs it, the lengths held as one array.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import pyarrow as pa

from p3bench.data.example import Example

#: the pool file's schema: the Example fields, ``tests`` and ``meta`` as JSON text
POOL_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.large_string()),
        ("target", pa.large_string()),
        ("answer", pa.string()),
        ("tests", pa.large_string()),
        ("meta", pa.string()),
    ]
)
#: the rows written to the file at a time (a record batch)
WRITE_BATCH = 8192
#: the rows read at a time when a pool is iterated
READ_BATCH = 4096


def _json(value: Any, what: str, example_id: str) -> str:
    try:
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"pool.storage=arrow: example {example_id!r} has {what} that JSON cannot hold ({exc}); "
            "expected plain strings, numbers, booleans, lists and dicts"
        ) from exc
    if json.loads(text) != value:
        raise ValueError(
            f"pool.storage=arrow: example {example_id!r} has {what} that does not survive JSON "
            "(e.g. a tuple or non-string keys); expected plain lists and dicts with string keys"
        )
    return text


def _row(example: Example) -> tuple[str, str, str, str | None, str | None, str]:
    tests = None if example.tests is None else _json(example.tests, "tests", example.id)
    return (
        str(example.id),
        example.prompt,
        example.target,
        example.answer,
        tests,
        _json(example.meta, "meta", example.id),
    )


def _hash_row(digest: Any, row: tuple[Any, ...]) -> None:
    for value in row:
        field = b"\x00" if value is None else b"\x01" + value.encode("utf-8")
        digest.update(len(field).to_bytes(8, "little"))
        digest.update(field)


def write_arrow_pool(examples: Iterable[Example], directory: str | Path) -> Path:
    """Write ``examples`` to ``directory/<sha256 of the content>.arrow`` (an Arrow IPC stream, the format `datasets` memory-maps) and return its
    path. The file is written under a temporary name and renamed into place; if it already exists (the
    same content written before, by this or another process) the new copy is dropped."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(examples, Sequence):  # can be read twice: hash first, write only a pool not yet there
        digest = hashlib.sha256()
        for example in examples:
            _hash_row(digest, _row(example))
        path = directory / f"{digest.hexdigest()}.arrow"
        if path.exists():
            return path
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=".pool-", suffix=".arrow.tmp", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, POOL_SCHEMA) as writer:
            columns: list[list[Any]] = [[] for _ in POOL_SCHEMA]
            for example in examples:
                row = _row(example)
                _hash_row(digest, row)
                for column, value in zip(columns, row, strict=True):
                    column.append(value)
                if len(columns[0]) >= WRITE_BATCH:
                    writer.write_batch(pa.record_batch(columns, schema=POOL_SCHEMA))
                    columns = [[] for _ in POOL_SCHEMA]
            if columns[0] or not writer.stats.num_record_batches:
                writer.write_batch(pa.record_batch(columns, schema=POOL_SCHEMA))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        path = directory / f"{digest.hexdigest()}.arrow"
        if path.exists():
            tmp.unlink()
        else:
            os.replace(tmp, path)
        return path
    finally:
        tmp.unlink(missing_ok=True)


def _example(id_: str, prompt: str, target: str, answer: str | None, tests: str | None, meta: str) -> Example:
    """The :class:`Example` of one pool row (its :data:`POOL_SCHEMA` values, in order)."""
    return Example(
        id=id_,
        prompt=prompt,
        target=target,
        answer=answer,
        tests=None if tests is None else json.loads(tests),
        meta=json.loads(meta),
    )


class ArrowPool(Sequence[Example]):
    """The examples of an Arrow pool file, memory-mapped (``datasets.Dataset.from_file``), built lazily."""

    def __init__(self, path: str | Path) -> None:
        import datasets

        self.path = Path(path)
        self.dataset = datasets.Dataset.from_file(str(self.path), in_memory=False)
        missing = [name for name in POOL_SCHEMA.names if name not in self.dataset.column_names]
        if missing:
            raise ValueError(f"{self.path} is not a p3bench pool file: it has no column {missing[0]!r}")
        #: the content hash the file is named by (a pool written by :func:`write_arrow_pool`)
        self.fingerprint = self.path.stem
        self._ids: list[str] | None = None
        # the Example fields' columns (chunked arrays over the mapped file): one row is read per index
        self._columns = [self.dataset.data.table.column(name) for name in POOL_SCHEMA.names]

    @classmethod
    def from_examples(cls, examples: Iterable[Example], directory: str | Path) -> ArrowPool:
        """Write ``examples`` as a pool file under ``directory`` (or find it there) and open it."""
        return cls(write_arrow_pool(examples, directory))

    def __len__(self) -> int:
        return self.dataset.num_rows

    @overload
    def __getitem__(self, index: int) -> Example: ...

    @overload
    def __getitem__(self, index: slice) -> list[Example]: ...

    def __getitem__(self, index: int | slice) -> Example | list[Example]:
        if isinstance(index, slice):
            return self.take(range(*index.indices(len(self)))) if len(self) else []
        n = len(self)
        position = int(index)
        if position < 0:
            position += n
        if not 0 <= position < n:
            raise IndexError(f"pool index {index} out of range for a pool of {n}")
        return _example(*(column[position].as_py() for column in self._columns))

    def take(self, indices: Sequence[int] | np.ndarray) -> list[Example]:
        """The examples at ``indices`` (in that order), read with one Arrow ``take``."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            return []
        return self._examples(self.dataset.data.table.take(pa.array(indices)))

    def __iter__(self) -> Iterator[Example]:
        for rows in self.row_batches(POOL_SCHEMA.names):
            yield from (_example(*row) for row in zip(*rows.values(), strict=True))

    def row_batches(self, names: Sequence[str]) -> Iterator[dict[str, list[Any]]]:
        """The columns ``names`` as Python lists, :data:`READ_BATCH` rows at a time, in pool order."""
        table = self.dataset.data.table.select(list(names))
        for start in range(0, len(self), READ_BATCH):
            yield table.slice(start, READ_BATCH).to_pydict()

    @property
    def ids(self) -> list[str]:
        """Every example's id, in pool order (read once)."""
        if self._ids is None:
            self._ids = self.column("id")
        return self._ids

    def column(self, name: str) -> list[Any]:
        """One column of the pool as Python values (``prompt``, ``target``, ``answer``, or ``meta`` and
        ``tests`` decoded from JSON), without building examples."""
        values = self.dataset.data.table.column(name).to_pylist()
        if name in ("meta", "tests"):
            return [None if v is None else json.loads(v) for v in values]
        return values

    def _examples(self, table: Any) -> list[Example]:
        rows = table.select(POOL_SCHEMA.names).to_pydict()
        return [_example(*row) for row in zip(*(rows[name] for name in POOL_SCHEMA.names), strict=True)]

    def __repr__(self) -> str:
        return f"ArrowPool({len(self)} examples, {self.path})"


def pool_ids(pool: Sequence[Example]) -> list[str]:
    """The pool's ids in order: read from the Arrow column for an :class:`ArrowPool`."""
    return pool.ids if isinstance(pool, ArrowPool) else [ex.id for ex in pool]


def iter_meta(pool: Sequence[Example]) -> Iterator[dict[str, Any]]:
    """Every example's ``meta`` in order, streamed a batch of rows at a time for an :class:`ArrowPool`."""
    if not isinstance(pool, ArrowPool):
        yield from (ex.meta for ex in pool)
        return
    for rows in pool.row_batches(["meta"]):
        yield from (json.loads(text) for text in rows["meta"])


class _PoolTexts(Sequence[str]):
    """Each Arrow pool example's ``prompt + target``, read a batch of rows at a time when iterated: the
    pool's texts without holding them all (what a tokenizer trained on the pool reads)."""

    def __init__(self, pool: ArrowPool) -> None:
        self._pool = pool

    def __len__(self) -> int:
        return len(self._pool)

    def __getitem__(self, index: int) -> str:  # type: ignore[override]
        example = self._pool[index]
        return example.prompt + example.target

    def __iter__(self) -> Iterator[str]:
        for rows in self._pool.row_batches(["prompt", "target"]):
            yield from (p + t for p, t in zip(rows["prompt"], rows["target"], strict=True))


def pool_texts(pool: Sequence[Example]) -> Sequence[str]:
    """Every pool example's ``prompt + target`` in order: a list for a pool in memory, a lazy sequence
    (read in batches, never all held) for an :class:`ArrowPool`."""
    if isinstance(pool, ArrowPool):
        return _PoolTexts(pool)
    return [ex.prompt + ex.target for ex in pool]


class _RowColumn(Sequence[list[int]]):
    """A list-of-token-ids column of an Arrow table, one row read per index."""

    def __init__(self, column: Any) -> None:
        self._column = column

    def __len__(self) -> int:
        return len(self._column)

    def __getitem__(self, index: int) -> list[int]:  # type: ignore[override]
        return self._column[int(index)].as_py()

    def __iter__(self) -> Iterator[list[int]]:
        for chunk in self._column.chunks:
            yield from chunk.to_pylist()


class ArrowEncodedPool:
    """Token ids of an Arrow pool's prompts and targets (the interface of ``EncodedPool``), on disk."""

    def __init__(self, dataset: Any) -> None:
        table = dataset.data.table
        self.dataset = dataset
        self.prompt_ids = _RowColumn(table.column("prompt_ids"))
        self.target_ids = _RowColumn(table.column("target_ids"))
        lengths = pa.compute.add(
            pa.compute.list_value_length(table.column("prompt_ids")),
            pa.compute.list_value_length(table.column("target_ids")),
        )
        self.lengths = np.asarray(lengths.to_numpy(zero_copy_only=False), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    def num_tokens(self, index: int, max_length: int) -> int:
        return int(min(self.lengths[index], max_length))


def _encode_batch(batch: dict[str, list[Any]], tokenizer: Any) -> dict[str, list[list[int]]]:
    """What :func:`p3bench.models.collate.encode_examples` computes, for one batch of pool rows."""
    prompts = tokenizer(batch["prompt"], add_special_tokens=False)["input_ids"]
    targets = tokenizer(batch["target"], add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return {"prompt_ids": [bos + p for p in prompts], "target_ids": [t + eos for t in targets]}


@contextlib.contextmanager
def datasets_progress() -> Iterator[None]:
    """``datasets``' own progress bars on or off as p3bench's are (``progress=false`` silences them)."""
    import datasets

    from p3bench.utils.progress import progress_shown

    was_enabled = datasets.is_progress_bar_enabled()
    if progress_shown():
        datasets.enable_progress_bars()
    else:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
        else:
            datasets.disable_progress_bars()


def encode_arrow_pool(pool: ArrowPool, tokenizer: Any, num_proc: int = 1) -> ArrowEncodedPool:
    """Tokenise ``pool`` with ``datasets.map`` (``num_proc`` processes), cached beside the pool file by the
    pool's fingerprint and the tokenizer's digest: a second run with the same data and tokenizer reads
    the tokens from disk."""
    import datasets

    from p3bench.models.weights_cache import tokenizer_digest

    key = hashlib.sha256(f"{pool.fingerprint}:{tokenizer_digest(tokenizer)}".encode()).hexdigest()[:32]
    directory = pool.path.parent / "encoded"
    directory.mkdir(parents=True, exist_ok=True)
    features = datasets.Features(
        {
            "prompt_ids": datasets.Sequence(datasets.Value("int32")),
            "target_ids": datasets.Sequence(datasets.Value("int32")),
        }
    )
    with datasets_progress():
        encoded = pool.dataset.map(
            _encode_batch,
            batched=True,
            batch_size=1000,
            fn_kwargs={"tokenizer": tokenizer},
            num_proc=num_proc if num_proc > 1 else None,
            remove_columns=pool.dataset.column_names,
            features=features,
            cache_file_name=str(directory / f"{key}.arrow"),
            load_from_cache_file=True,
            new_fingerprint=key,
            desc="tokenising the pool",
        )
    return ArrowEncodedPool(encoded)
