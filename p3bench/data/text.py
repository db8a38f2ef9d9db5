"""Pre-training text corpora for the ``lm`` task: C4, the Pile, plain-text books and mixtures of them.

Sachdeva et al., "How to Train Data-Efficient LLMs" (arXiv 2402.09668), select pre-training documents from
C4 and judge a selection by the held-out perplexity of the model trained on it. The adapters here give
``DatasetSplits(task="lm")`` whose examples are whole documents:

- ``prompt=""``, ``target`` = the document text, ``answer=None``: training and evaluation cover every
  token of the document (after BOS, up to the run's ``max_length``);
- ``id``: stable and unique: ``c4-{index}`` / ``pile-{index}`` (the index counts the source's records from
  0, skipped empty ones included, so an id does not move when another record changes), ``c4-test-{index}``
  for a given test file, ``{file stem}-{chunk}`` for text files;
- ``meta``: ``domain`` (``"c4"``, the Pile subset such as ``"Pile-CC"``, a book's title) and ``source``
  (the file name or hub id the document came from).

Empty and whitespace-only documents are skipped and counted (``info["n_empty"]``). Validation and test are
carved from the documents with :func:`~p3bench.data.records.make_splits` (seeded; sizes are counts or
fractions) unless given as files; ``max_train`` then caps the train pool (seeded subset). Every bad input
is a one-line :class:`~p3bench.errors.ConfigError` or :class:`~p3bench.errors.DataError`.

Adapters: :func:`load_c4`, :func:`load_pile`, :func:`load_text_files` (with :func:`load_gutenberg` and
:func:`load_tinyshakespeare`, its registered variants) and :func:`load_text_mix`, a mixture of the others
with planted near-duplicates and junk for measuring what a selection method removes.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import inspect
import itertools
import logging
import numbers
import random
import re
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from p3bench.data.example import DatasetSplits, Example
from p3bench.data.records import carve_splits, check_unique_ids, read_source, subsample
from p3bench.errors import ConfigError, DataError
from p3bench.registry import closest, unknown_name_message

logger = logging.getLogger(__name__)

#: ``record -> (text, domain) or a one-line reason the record is unusable``
Extractor = Callable[[dict], "tuple[str, str | None] | str"]


# ------------------------------------------------------------------------------------------ shared helpers


def _check_count(value: Any, name: str, minimum: int = 1) -> int | None:
    """``value`` as an int >= ``minimum``, None for None; anything else is a one-line ConfigError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{name}={value!r} is invalid: expected an integer >= {minimum} or null")
    return int(value)


def _validator(extract: Extractor) -> Callable[[dict], str | None]:
    def validate(record: dict) -> str | None:
        result = extract(record)
        return result if isinstance(result, str) else None

    return validate


def stream_hub_records(
    dataset: str,
    hub_id: str,
    hub_config: str | None,
    split: str,
    max_docs: int | None,
    validate: Callable[[dict], str | None],
    skip_bad: bool,
) -> tuple[list[dict], int]:
    """The first ``max_docs`` records of a Hugging Face hub dataset, streamed (``datasets`` with
    ``streaming=True``), so that only those documents are downloaded. ``max_docs`` is required: a web corpus
    such as ``allenai/c4`` holds hundreds of millions of documents.

    Returns ``(records, n_skipped)``; a bad record is a :class:`DataError` naming its row unless ``skip_bad``.
    """
    if not isinstance(hub_id, str) or not hub_id.strip():
        raise ConfigError(f"{dataset}: hub_id={hub_id!r} is not a dataset id: expected e.g. 'allenai/c4'")
    if max_docs is None:
        raise ConfigError(
            f"{dataset}: hub_id={hub_id!r} streams documents and max_docs is null: expected max_docs=<count> "
            "to bound how many documents are read"
        )
    try:
        import datasets

        stream = datasets.load_dataset(hub_id, hub_config, split=split, streaming=True)
        rows = [dict(row) for row in itertools.islice(stream, max_docs)]
    except Exception as err:  # offline, unknown id, missing config or split: all say the same to the user
        reason = " ".join(str(err).split())[:300]
        config = f" config {hub_config!r}" if hub_config else ""
        raise DataError(
            f"hub dataset {hub_id!r}{config} split {split!r} could not be streamed ({type(err).__name__}: "
            f"{reason}); expected a reachable hub id, or set data_files= to local .jsonl files instead"
        ) from err
    records: list[dict] = []
    skipped = 0
    for index, row in enumerate(rows):
        problem = validate(row)
        if problem is None:
            records.append(row)
        elif skip_bad:
            skipped += 1
        else:
            raise DataError(
                f"hub dataset {hub_id!r} row {index}: {problem}; pass skip_bad=true to skip bad records"
            )
    if skipped:
        logger.warning("skipped %d bad record(s) of hub dataset %r (skip_bad=true)", skipped, hub_id)
    return records, skipped


def _read_documents(
    dataset: str,
    *,
    data_files: Any,
    hub_id: str | None,
    hub_config: str | None,
    split: str,
    max_docs: int | None,
    extract: Extractor,
    skip_bad: bool,
) -> tuple[dict[str, list[dict]], int, str, dict[str, str]]:
    """Raw records by split from local files (through :func:`read_source`) or a streamed hub dataset, the
    count of skipped bad records, a description of the source, and a short source label per split."""
    max_docs = _check_count(max_docs, f"{dataset} max_docs")
    validate = _validator(extract)
    if hub_id is not None and data_files is None:
        records, skipped = stream_hub_records(
            dataset, hub_id, hub_config, split, max_docs, validate, skip_bad
        )
        description = f"hub:{hub_id}" + (f"/{hub_config}" if hub_config else "")
        return {"train": records}, skipped, description, {"train": description}
    sources, skipped, description = read_source(
        dataset,
        data_files=data_files,
        hub_id=hub_id,
        required=(),
        skip_bad=skip_bad,
        validate=validate,
    )
    if max_docs is not None:
        sources["train"] = sources["train"][:max_docs]
    named = data_files if isinstance(data_files, Mapping) else {"train": data_files}
    labels = {
        _SPLIT_NAMES.get(split_name, split_name): Path(files).name
        if isinstance(files, (str, Path))
        else "local files"
        for split_name, files in named.items()
    }
    return sources, skipped, description, labels


_SPLIT_NAMES = {"val": "validation"}


def _to_documents(
    records: Iterable[dict], extract: Extractor, prefix: str, source: str
) -> tuple[list[Example], int]:
    """One :class:`Example` per non-empty record (``id = {prefix}-{index}``) and the count of empty ones."""
    documents: list[Example] = []
    n_empty = 0
    for index, record in enumerate(records):
        text, domain = extract(record)  # type: ignore[misc]  # records were validated by the reader
        if not text.strip():
            n_empty += 1
            continue
        documents.append(document(f"{prefix}-{index}", text, domain, source))
    return documents, n_empty


def document(doc_id: str, text: str, domain: str | None, source: str, **meta: Any) -> Example:
    """An ``lm`` example: empty prompt, the text as target, no answer, ``domain`` and ``source`` in meta."""
    return Example(
        id=doc_id, prompt="", target=text, answer=None, meta={"domain": domain, "source": source, **meta}
    )


def lm_splits(
    name: str,
    sources: Mapping[str, list[Example]],
    *,
    val_size: int | float,
    test_size: int | float,
    seed: int,
    max_train: int | None,
    stratify_key: Callable[[Example], Hashable] | None = None,
    info: Mapping[str, Any] | None = None,
) -> DatasetSplits:
    """``DatasetSplits(task="lm")`` from documents by source split: given ``"validation"`` / ``"test"``
    sources are used as they are, missing ones carved from ``"train"`` with :func:`make_splits` (seeded,
    stratified by ``stratify_key`` when given); ``max_train`` then caps the train pool. Ids must be unique."""
    if not sources["train"]:
        raise DataError(f"{name}: the train source has no non-empty document: expected at least one")
    train, validation, test = carve_splits(
        name,
        sources,
        val_size=val_size,
        test_size=test_size,
        seed=seed,
        max_train=_check_count(max_train, f"{name} max_train"),
        stratify_key=stratify_key,
        carvable=lambda ex: True,
        what="documents",
        ids_expected="unique document ids",
    )
    info = {
        **(info or {}),
        "validation_from": "given" if "validation" in sources else "train",
        "test_from": "given" if "test" in sources else "train",
    }
    return DatasetSplits(name=name, task="lm", train=train, validation=validation, test=test, info=info)


def documents_by_split(
    name: str, records: Mapping[str, list[dict]], extract: Extractor, labels: Mapping[str, str]
) -> tuple[dict[str, list[Example]], int]:
    """The non-empty documents of each split's validated records (ids ``{name}-{index}`` for train,
    ``{name}-{split}-{index}`` otherwise; ``meta.source`` the split's label, ``name`` without one) and the
    count of empty ones over all splits."""
    documents: dict[str, list[Example]] = {}
    n_empty = 0
    for split, rows in records.items():
        prefix = name if split == "train" else f"{name}-{split}"
        documents[split], empty = _to_documents(rows, extract, prefix, labels.get(split, name))
        n_empty += empty
    return documents, n_empty


def domain_counts(examples: Iterable[Example]) -> dict[str | None, int]:
    """``{meta.domain: number of examples}``, sorted by domain."""
    return dict(sorted(Counter(ex.meta["domain"] for ex in examples).items()))


# ---------------------------------------------------------------------------------------------------- C4


def _c4_extractor(text_field: str) -> Extractor:
    def extract(record: dict) -> tuple[str, str | None] | str:
        if text_field not in record or record[text_field] is None:
            return f"record has no {text_field!r} field: expected a document text in {text_field!r}"
        if not isinstance(record[text_field], str):
            return f"field {text_field!r} is a {type(record[text_field]).__name__}: expected a string"
        return record[text_field], "c4"

    return extract


def load_c4(
    data_files: Any = None,
    hub_id: str | None = None,
    hub_config: str | None = None,
    split: str = "train",
    text_field: str = "text",
    max_docs: int | None = None,
    val_size: int | float = 0.1,
    test_size: int | float = 0.1,
    seed: int = 0,
    max_train: int | None = None,
    skip_bad: bool = False,
) -> DatasetSplits:
    """C4 web documents (the pre-training pool of arXiv 2402.09668): JSON Lines with a ``text`` field.

    From local files (``data_files``: a path, glob, list, or a mapping with ``train`` and optional
    ``validation`` / ``test``) or streamed from the hub (``hub_id="allenai/c4"``, ``hub_config="en"``, with
    ``max_docs`` documents). ``max_docs`` also caps local files (the first documents). ``meta.domain`` is
    ``"c4"``.
    """
    extract = _c4_extractor(text_field)
    records, n_skipped, source, labels = _read_documents(
        "c4",
        data_files=data_files,
        hub_id=hub_id,
        hub_config=hub_config,
        split=split,
        max_docs=max_docs,
        extract=extract,
        skip_bad=skip_bad,
    )
    documents, n_empty = documents_by_split("c4", records, extract, labels)
    info = {
        "source": source,
        "n_records": sum(len(rows) for rows in records.values()),
        "n_skipped": n_skipped,
        "n_empty": n_empty,
    }
    return lm_splits(
        "c4", documents, val_size=val_size, test_size=test_size, seed=seed, max_train=max_train, info=info
    )


# -------------------------------------------------------------------------------------------------- Pile


def _pile_extract(record: dict) -> tuple[str, str | None] | str:
    text = record.get("text", record.get("contents"))
    if text is None:
        return "record has neither 'text' nor 'contents': expected the document text in one of them"
    if not isinstance(text, str):
        return f"the document text is a {type(text).__name__}: expected a string"
    for key in ("meta", "metadata"):
        meta = record.get(key)
        if isinstance(meta, dict) and meta.get("pile_set_name") is not None:
            domain = meta["pile_set_name"]
            if not isinstance(domain, str):
                return f"field {key}.pile_set_name is a {type(domain).__name__}: expected a string"
            return text, domain
    return "record has no meta.pile_set_name or metadata.pile_set_name: expected the Pile domain there"


def _filter_domains(documents: dict[str, list[Example]], domains: Any) -> dict[str, list[Example]]:
    if domains is None:
        return documents
    wanted = [domains] if isinstance(domains, str) else domains
    if not isinstance(wanted, Sequence) or not wanted or not all(isinstance(d, str) for d in wanted):
        raise ConfigError(f"pile domains={domains!r} is invalid: expected a domain name or a list of them")
    known = sorted({ex.meta["domain"] for rows in documents.values() for ex in rows})
    for name in wanted:
        if name not in known:
            raise ConfigError(unknown_name_message("Pile domain", name, known))
    keep = set(wanted)
    return {split: [ex for ex in rows if ex.meta["domain"] in keep] for split, rows in documents.items()}


def load_pile(
    data_files: Any = None,
    hub_id: str | None = None,
    hub_config: str | None = None,
    split: str = "train",
    max_docs: int | None = None,
    domains: str | list[str] | None = None,
    stratify: bool = True,
    val_size: int | float = 0.1,
    test_size: int | float = 0.1,
    seed: int = 0,
    max_train: int | None = None,
    skip_bad: bool = False,
) -> DatasetSplits:
    """The Pile (Gao et al., 2020): JSON Lines with the text in ``text`` or ``contents`` and the subset in
    ``meta.pile_set_name`` or ``metadata.pile_set_name``, which becomes ``meta.domain``.

    Sources as for :func:`load_c4`. ``domains`` keeps only the named subsets; validation and test are
    stratified by domain (each domain contributes in proportion to its size) unless ``stratify=false``.
    """
    records, n_skipped, source, labels = _read_documents(
        "pile",
        data_files=data_files,
        hub_id=hub_id,
        hub_config=hub_config,
        split=split,
        max_docs=max_docs,
        extract=_pile_extract,
        skip_bad=skip_bad,
    )
    documents, n_empty = documents_by_split("pile", records, _pile_extract, labels)
    n_documents = sum(len(rows) for rows in documents.values())
    documents = _filter_domains(documents, domains)
    info = {
        "source": source,
        "n_records": sum(len(rows) for rows in records.values()),
        "n_skipped": n_skipped,
        "n_empty": n_empty,
        "n_filtered_out": n_documents - sum(len(rows) for rows in documents.values()),
        "domains": domain_counts(ex for rows in documents.values() for ex in rows),
    }
    return lm_splits(
        "pile",
        documents,
        val_size=val_size,
        test_size=test_size,
        seed=seed,
        max_train=max_train,
        stratify_key=(lambda ex: ex.meta["domain"]) if stratify else None,
        info=info,
    )


# ------------------------------------------------------------------------------------------- text files

_GUTENBERG_START = re.compile(r"^\*{3}\s*START OF.*$", re.MULTILINE | re.IGNORECASE)
_GUTENBERG_END = re.compile(r"^\*{3}\s*END OF.*$", re.MULTILINE | re.IGNORECASE)
# the closing "End of the Project Gutenberg EBook of ..." line (sometimes wrapped), within the last characters
_GUTENBERG_CLOSING = re.compile(r"^[ \t]*End of (?:the )?Project Gutenberg", re.MULTILINE | re.IGNORECASE)
_CLOSING_WINDOW = 400
# a leading credits paragraph ("Produced by ...", "E-text prepared by ...")
_GUTENBERG_CREDITS = re.compile(
    r"\A(?:Produced by|E-?text prepared by|Transcribed from)\b.*?\n[ \t]*\n", re.IGNORECASE | re.DOTALL
)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def strip_gutenberg(text: str, source: str = "text") -> str:
    """The body of a Project Gutenberg eBook: the text between the ``*** START OF ...`` and ``*** END OF
    ...`` marker lines, without a leading ``Produced by ...`` credits paragraph or the closing ``End of the
    Project Gutenberg EBook ...`` line."""
    start = _GUTENBERG_START.search(text)
    end = _GUTENBERG_END.search(text, start.end()) if start else None
    if start is None or end is None:
        missing = "'*** START OF'" if start is None else "'*** END OF'"
        raise DataError(
            f"{source} has no {missing} Project Gutenberg marker line: expected a Gutenberg eBook, or set "
            "strip_gutenberg=false"
        )
    body = text[start.end() : end.start()].strip()
    body = _GUTENBERG_CREDITS.sub("", body).strip()
    closing = _GUTENBERG_CLOSING.search(body, max(0, len(body) - _CLOSING_WINDOW))
    return body[: closing.start()].strip() if closing else body


def _pieces(text: str, chunk_words: int) -> list[tuple[str, int, str]]:
    """``(piece, n_words, joiner)``: whole paragraphs (joined by a blank line), and for a paragraph over
    ``chunk_words`` its lines (joined by a newline), a line over ``chunk_words`` cut into word windows."""
    pieces: list[tuple[str, int, str]] = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        paragraph = paragraph.strip()
        n_words = len(paragraph.split())
        if n_words == 0:
            continue
        if n_words <= chunk_words:
            pieces.append((paragraph, n_words, "\n\n"))
            continue
        joiner = "\n\n"
        for line in paragraph.split("\n"):
            words = line.split()
            if len(words) <= chunk_words:
                if words:
                    pieces.append((line.rstrip(), len(words), joiner))
                    joiner = "\n"
                continue
            for start in range(0, len(words), chunk_words):
                window = words[start : start + chunk_words]
                pieces.append((" ".join(window), len(window), joiner))
                joiner = " "
            joiner = "\n"
    return pieces


def chunk_text(text: str, chunk_words: int = 200) -> list[str]:
    """``text`` cut into documents of at most ``chunk_words`` words, along paragraph boundaries.

    Paragraphs (separated by blank lines) are packed greedily; a paragraph longer than ``chunk_words`` is
    cut between lines, and a line longer than that between words. Every word of ``text`` is in exactly one
    chunk, in order: ``" ".join(chunks).split() == text.split()``.
    """
    if isinstance(chunk_words, bool) or not isinstance(chunk_words, numbers.Integral) or chunk_words < 1:
        raise ConfigError(f"chunk_words={chunk_words!r} is invalid: expected an integer >= 1")
    chunks: list[str] = []
    current: list[str] = []
    count = 0
    for piece, n_words, joiner in _pieces(text.replace("\r\n", "\n").replace("\r", "\n"), int(chunk_words)):
        if current and count + n_words > chunk_words:
            chunks.append("".join(current))
            current, count = [], 0
        current.append(joiner + piece if current else piece)
        count += n_words
    if current:
        chunks.append("".join(current))
    return chunks


def _text_paths(data_files: Any, max_files: int | None) -> list[Path]:
    """The files named by a path, a glob pattern or a list of them (globs sorted), at most ``max_files``."""
    if data_files is None:
        raise ConfigError("text files: data_files is null: expected a .txt path, a glob pattern or a list")
    items = [data_files] if isinstance(data_files, (str, Path)) else data_files
    if not isinstance(items, Sequence) or isinstance(items, Mapping) or not items:
        raise ConfigError(
            f"data_files={data_files!r} is not usable: expected a path, a glob pattern or a non-empty list of paths"
        )
    paths: list[Path] = []
    for item in items:
        if not isinstance(item, (str, Path)):
            raise ConfigError(f"data_files entry {item!r} is not a path: expected a text file path or glob")
        path = Path(item).expanduser()
        if not path.exists() and any(char in str(item) for char in "*?["):
            matches = sorted(glob.glob(str(path)))
            if not matches:
                raise DataError(
                    f"data_files pattern {str(item)!r} matches no file (resolved from {Path.cwd()})"
                )
            paths.extend(Path(match) for match in matches)
        elif not path.is_file():
            what = "is a directory" if path.is_dir() else "not found"
            raise DataError(
                f"text file {path} {what}: expected a plain-text file (resolved to {path.resolve()})"
            )
        else:
            paths.append(path)
    limit = _check_count(max_files, "max_files")
    return paths[:limit] if limit is not None else paths


def read_text(path: Path, encoding: str | None = None) -> tuple[str, str]:
    """The text of ``path`` with ``\\n`` line ends and the encoding used: ``encoding`` when given, else
    UTF-8 (a BOM is dropped), falling back to Windows-1252 (some Gutenberg files are)."""
    data = path.read_bytes()
    for name in [encoding] if encoding else ["utf-8-sig", "cp1252"]:
        try:
            text = data.decode(name)
        except UnicodeDecodeError:
            continue
        except LookupError as err:
            raise ConfigError(
                f"encoding={encoding!r} is not a known text encoding: expected e.g. 'utf-8'"
            ) from err
        return text.replace("\r\n", "\n").replace("\r", "\n"), name
    tried = encoding or "UTF-8 or Windows-1252"
    raise DataError(f"text file {path} is not {tried} text: expected a plain-text file (set encoding=...)")


def manifest_titles(directory: Path) -> dict[str, str]:
    """File name -> title from a Gutenberg ``MANIFEST.csv`` (``file_name, title, ...``) in ``directory``."""
    path = directory / "MANIFEST.csv"
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = csv.DictReader(handle, skipinitialspace=True)
        return {
            row["file_name"].strip(): row["title"].strip()
            for row in rows
            if row.get("file_name") and (row.get("title") or "").strip()
        }


def _file_documents(
    path: Path,
    *,
    chunk_words: int,
    strip: bool,
    encoding: str | None,
    domain: str | None,
    max_docs_per_file: int | None,
    seed: int,
) -> tuple[list[Example], str]:
    text, used = read_text(path, encoding)
    if strip:
        text = strip_gutenberg(text, str(path))
    chunks = chunk_text(text, chunk_words)
    title = domain or manifest_titles(path.parent).get(path.name) or path.stem
    documents = [document(f"{path.stem}-{k}", chunk, title, path.name) for k, chunk in enumerate(chunks)]
    return subsample(documents, max_docs_per_file, seed, name="max_docs_per_file"), used


def load_text_files(
    data_files: Any = None,
    chunk_words: int = 200,
    strip_gutenberg: bool = False,
    max_files: int | None = None,
    max_docs_per_file: int | None = None,
    domain: str | None = None,
    encoding: str | None = None,
    val_size: int | float = 0.1,
    test_size: int | float = 0.1,
    seed: int = 0,
    max_train: int | None = None,
) -> DatasetSplits:
    """Plain-text files (a path, a glob or a list; at most ``max_files``, in sorted glob order) cut into
    documents of at most ``chunk_words`` words along paragraph boundaries (:func:`chunk_text`).

    ``strip_gutenberg`` keeps only the body between Project Gutenberg's ``*** START OF`` and ``*** END OF``
    markers. ``max_docs_per_file`` keeps a seeded subset of each file's chunks (in order). ``meta.domain``
    is ``domain`` when given, else the title from a ``MANIFEST.csv`` beside the file, else the file stem.
    Validation and test are stratified by domain.
    """
    return _load_text_files(
        "text_files",
        data_files=data_files,
        chunk_words=chunk_words,
        strip=strip_gutenberg,
        max_files=max_files,
        max_docs_per_file=max_docs_per_file,
        domain=domain,
        encoding=encoding,
        val_size=val_size,
        test_size=test_size,
        seed=seed,
        max_train=max_train,
    )


def load_gutenberg(
    data_files: Any = None,
    chunk_words: int = 200,
    strip_gutenberg: bool = True,
    max_files: int | None = None,
    max_docs_per_file: int | None = None,
    domain: str | None = None,
    encoding: str | None = None,
    val_size: int | float = 0.1,
    test_size: int | float = 0.1,
    seed: int = 0,
    max_train: int | None = None,
) -> DatasetSplits:
    """Project Gutenberg books: :func:`load_text_files` with the eBook header and footer stripped by
    default and each book's title (from ``MANIFEST.csv``) as its domain."""
    return _load_text_files(
        "gutenberg",
        data_files=data_files,
        chunk_words=chunk_words,
        strip=strip_gutenberg,
        max_files=max_files,
        max_docs_per_file=max_docs_per_file,
        domain=domain,
        encoding=encoding,
        val_size=val_size,
        test_size=test_size,
        seed=seed,
        max_train=max_train,
    )


def load_tinyshakespeare(
    data_files: Any = None,
    chunk_words: int = 200,
    max_docs_per_file: int | None = None,
    domain: str | None = "shakespeare",
    val_size: int | float = 0.1,
    test_size: int | float = 0.1,
    seed: int = 0,
    max_train: int | None = None,
) -> DatasetSplits:
    """Tiny Shakespeare (one text file of plays): :func:`load_text_files`, cut between speeches."""
    return _load_text_files(
        "tinyshakespeare",
        data_files=data_files,
        chunk_words=chunk_words,
        strip=False,
        max_files=None,
        max_docs_per_file=max_docs_per_file,
        domain=domain,
        encoding=None,
        val_size=val_size,
        test_size=test_size,
        seed=seed,
        max_train=max_train,
    )


def _load_text_files(
    name: str,
    *,
    data_files: Any,
    chunk_words: int,
    strip: bool,
    max_files: int | None,
    max_docs_per_file: int | None,
    domain: str | None,
    encoding: str | None,
    val_size: int | float,
    test_size: int | float,
    seed: int,
    max_train: int | None,
) -> DatasetSplits:
    if domain is not None and (not isinstance(domain, str) or not domain.strip()):
        raise ConfigError(f"{name} domain={domain!r} is invalid: expected a non-empty name or null")
    max_docs_per_file = _check_count(max_docs_per_file, f"{name} max_docs_per_file")
    paths = _text_paths(data_files, max_files)
    documents: list[Example] = []
    encodings: dict[str, str] = {}
    for path in paths:
        rows, used = _file_documents(
            path,
            chunk_words=chunk_words,
            strip=bool(strip),
            encoding=encoding,
            domain=domain,
            max_docs_per_file=max_docs_per_file,
            seed=seed,
        )
        documents.extend(rows)
        encodings[path.name] = used
    info = {
        "source": ", ".join(str(p) for p in paths)
        if len(paths) <= 3
        else f"{len(paths)} files ({paths[0]}, ...)",
        "files": [p.name for p in paths],
        "n_documents": len(documents),
        "chunk_words": chunk_words,
        "strip_gutenberg": bool(strip),
        "not_utf8": sorted(f for f, used in encodings.items() if used not in ("utf-8-sig", "utf-8")),
    }
    return lm_splits(
        name,
        {"train": documents},
        val_size=val_size,
        test_size=test_size,
        seed=seed,
        max_train=max_train,
        stratify_key=lambda ex: ex.meta["domain"],
        info=info,
    )


# ---------------------------------------------------------------------------------------------- text mix

#: Datasets a mixture component may name: the registered text datasets and plain ``text_files``.
TEXT_DATASETS: dict[str, Callable[..., DatasetSplits]] = {
    "c4": load_c4,
    "pile": load_pile,
    "text_files": load_text_files,
    "gutenberg": load_gutenberg,
    "tinyshakespeare": load_tinyshakespeare,
}
_COMPONENT_KEYS = ("dataset", "params", "max_docs", "domain")

_BOILERPLATE = (
    "Click here to subscribe to our newsletter.",
    "All rights reserved.",
    "This website uses cookies to improve your experience. Accept | Decline",
    "Share this page: Facebook | Twitter | Pinterest | Email",
    "Log in or register to post comments.",
    "Terms of Use | Privacy Policy | Contact Us | Sitemap",
    "Previous page | Next page | Back to top",
    "Sign up today and get 10% off your first order!",
    "Copyright 2019. Powered by WordPress.",
    "Read more...",
)
_SPAM_TERMS = ("best", "cheap", "free", "buy", "online", "discount", "price", "deal", "top", "sale")
_JUNK_KINDS = ("shuffled", "boilerplate", "spam")


def _load_component(name: str, spec: Any, seed: int) -> tuple[DatasetSplits, int | None, str | None]:
    if not isinstance(name, str) or not name.strip() or "/" in name:
        raise ConfigError(
            f"text_mix component name {name!r} is invalid: expected a non-empty name without '/'"
        )
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"text_mix components.{name}={spec!r} is invalid: expected a mapping with 'dataset' and optional "
            "'params', 'max_docs', 'domain'"
        )
    unknown = [key for key in spec if key not in _COMPONENT_KEYS]
    if unknown:
        raise ConfigError(
            f"text_mix components.{name} has unknown key {unknown[0]!r}: expected keys {', '.join(_COMPONENT_KEYS)}"
        )
    dataset = spec.get("dataset")
    if not isinstance(dataset, str) or dataset not in TEXT_DATASETS:
        raise ConfigError(
            unknown_name_message(f"text dataset for text_mix components.{name}", dataset, list(TEXT_DATASETS))
        )
    params = spec.get("params") or {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"text_mix components.{name}.params={params!r} is invalid: expected a mapping")
    domain = spec.get("domain")
    if domain is not None and (not isinstance(domain, str) or not domain.strip()):
        raise ConfigError(f"text_mix components.{name}.domain={domain!r} is invalid: expected a name or null")
    max_docs = _check_count(spec.get("max_docs"), f"text_mix components.{name}.max_docs")
    loader = TEXT_DATASETS[dataset]
    splits = loader(**_checked_params(name, dataset, loader, {"seed": seed, **params}))
    return splits, max_docs, domain


def _checked_params(
    component: str, dataset: str, loader: Callable[..., Any], params: Mapping[str, Any]
) -> dict[str, Any]:
    accepted = list(inspect.signature(loader).parameters)
    for key in params:
        if key not in accepted:
            hint = closest(str(key), accepted)
            raise ConfigError(
                f"text_mix components.{component}.params.{key} is not a parameter of dataset {dataset!r}: "
                f"expected one of {', '.join(accepted)}" + (f"; did you mean {hint!r}?" if hint else "")
            )
    return dict(params)


def _component_id(component: str, doc_id: str) -> str:
    """An opaque train id: no id tells a planted document from a real one."""
    return f"{component}-{hashlib.sha256(f'{component}/{doc_id}'.encode()).hexdigest()[:12]}"


def _relabel(component: str, ex: Example, domain: str | None, train: bool) -> Example:
    meta = {**ex.meta, "domain": domain or ex.meta.get("domain") or component, "component": component}
    meta.update(is_noisy=False, is_junk=False, dup_group=None, is_duplicate=False)
    doc_id = _component_id(component, ex.id) if train else f"{component}/{ex.id}"
    return Example(id=doc_id, prompt="", target=ex.target, answer=None, meta=meta)


def planted_counts(n_clean: int, duplicate_rate: float, junk_rate: float) -> tuple[int, int]:
    """``(n_duplicates, n_junk)`` so that they are ``round(rate * n)`` of the final pool of ``n = n_clean +
    n_duplicates + n_junk`` documents (a fixed point that always exists for rates summing below 1)."""
    total = n_clean
    while True:
        n_dup, n_junk = round(duplicate_rate * total), round(junk_rate * total)
        if n_clean + n_dup + n_junk <= total:
            return n_dup, n_junk
        total += 1


def _clean_budget(n_clean: int, max_train: int | None, duplicate_rate: float, junk_rate: float) -> int:
    """The largest clean pool (<= ``n_clean``) whose planted pool has at most ``max_train`` documents."""
    if max_train is None:
        return n_clean
    keep = min(n_clean, max_train)
    while keep > 1 and keep + sum(planted_counts(keep, duplicate_rate, junk_rate)) > max_train:
        keep -= 1
    return keep


def _words_with_spaces(text: str) -> list[str]:
    return re.split(r"(\s+)", text)


def near_duplicate(text: str, rng: random.Random, max_edits: int = 4) -> str:
    """``text`` with 1 to ``max_edits`` of its words replaced by other words of the same text (or common
    words when it has too few), whitespace and every other word unchanged."""
    parts = _words_with_spaces(text)
    positions = [i for i, part in enumerate(parts) if part and not part.isspace()]
    vocabulary = sorted({parts[i] for i in positions}) or ["the"]
    fallback = ["the", "and", "of", "a", "to", "in"]
    for i in rng.sample(positions, min(len(positions), rng.randint(1, max_edits))):
        choices = [w for w in vocabulary if w != parts[i]] or [w for w in fallback if w != parts[i]]
        parts[i] = rng.choice(choices)
    return "".join(parts)


def junk_document(kind: str, source: str, rng: random.Random) -> str:
    """A low-quality document about as long (in words) as ``source``: its words shuffled (``shuffled``),
    repeated web boilerplate lines (``boilerplate``), or its frequent words as keyword spam (``spam``)."""
    words = source.split()
    n_words = max(20, len(words))
    if kind == "shuffled":
        shuffled = list(words) or ["the"]
        rng.shuffle(shuffled)
        return " ".join(shuffled)
    if kind == "boilerplate":
        lines, count = [], 0
        while count < n_words:
            line = rng.choice(_BOILERPLATE)
            lines.append(line)
            count += len(line.split())
        return "\n".join(lines)
    if kind == "spam":
        frequent = [
            w for w, _ in Counter(w.lower().strip(".,;:!?\"'()") for w in words).most_common(40) if len(w) > 3
        ]
        keywords = frequent[:8] + list(_SPAM_TERMS)
        lines = [
            " ".join(rng.choice(keywords) for _ in range(rng.randint(6, 12)))
            for _ in range(max(1, n_words // 9))
        ]
        return "\n".join(lines)
    raise ValueError(f"junk kind {kind!r} is not one of {_JUNK_KINDS}")


def plant_defects(
    pool: list[Example], n_duplicates: int, n_junk: int, rng: random.Random
) -> tuple[list[Example], dict[str, Any]]:
    """``pool`` plus ``n_duplicates`` near-duplicate copies (1 to 3 a group; every member of a group, the
    original included, has ``dup_group`` = the original's id, copies ``is_duplicate=True``) and ``n_junk``
    junk documents (``is_junk=True``, kinds in turn). Planted documents take the domain, component and
    source of the document they are made from and a fresh opaque id; the result is in a seeded order."""
    sizes: list[int] = []
    while sum(sizes) < n_duplicates:
        sizes.append(min(rng.randint(1, 3), n_duplicates - sum(sizes)))
    if len(sizes) > len(pool):
        raise ConfigError(
            f"text_mix duplicate_rate asks for {n_duplicates} copies in {len(sizes)} groups but the pool has "
            f"{len(pool)} documents: expected a lower duplicate_rate"
        )
    originals = rng.sample(range(len(pool)), len(sizes))
    result = list(pool)
    planted: list[Example] = []
    for position, size in zip(originals, sizes, strict=True):
        original = pool[position]
        result[position] = replace(original, meta={**original.meta, "dup_group": original.id})
        for copy in range(size):
            meta = {**original.meta, "dup_group": original.id, "is_duplicate": True}
            text = near_duplicate(original.target, rng)
            planted.append(_planted(original, f"dup/{original.id}/{copy}", text, meta))
    kinds: Counter[str] = Counter()
    for k in range(n_junk):
        source = pool[rng.randrange(len(pool))]
        kind = _JUNK_KINDS[k % len(_JUNK_KINDS)]
        kinds[kind] += 1
        meta = {**source.meta, "is_junk": True, "dup_group": None, "is_duplicate": False}
        planted.append(_planted(source, f"junk/{k}", junk_document(kind, source.target, rng), meta))
    result.extend(planted)
    rng.shuffle(result)
    info = {
        "n_duplicates": n_duplicates,
        "n_dup_groups": len(sizes),
        "n_junk": n_junk,
        "junk_kinds": dict(kinds),
    }
    return result, info


def _planted(source: Example, key: str, text: str, meta: dict[str, Any]) -> Example:
    return Example(
        id=_component_id(source.meta["component"], key), prompt="", target=text, answer=None, meta=meta
    )


def _check_rates(duplicate_rate: Any, junk_rate: Any) -> tuple[float, float]:
    for name, value in (("duplicate_rate", duplicate_rate), ("junk_rate", junk_rate)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
            raise ConfigError(f"text_mix {name}={value!r} is invalid: expected a rate in [0, 1)")
    if duplicate_rate + junk_rate >= 1:
        raise ConfigError(
            f"text_mix duplicate_rate={duplicate_rate} + junk_rate={junk_rate} >= 1 leave no real documents: "
            "expected a sum below 1"
        )
    return float(duplicate_rate), float(junk_rate)


def load_text_mix(
    components: Mapping[str, Any] | None = None,
    duplicate_rate: float = 0.0,
    junk_rate: float = 0.0,
    seed: int = 0,
    max_train: int | None = None,
) -> DatasetSplits:
    """A mixture of text datasets with optional planted defects (for measuring what selection removes).

    ``components`` maps a name to ``{dataset: c4|pile|text_files|gutenberg|tinyshakespeare, params: {...},
    max_docs: int|null, domain: str|null}``. Each component is loaded by its adapter (its ``seed`` defaults
    to this one), its train pool capped at ``max_docs`` documents (seeded), and its train, validation and
    test splits concatenated with the others'. Documents keep their domain (``domain`` overrides it; a
    document without one gets the component name) and carry ``meta.component``. Validation and test ids
    are ``{component}/{id}``; train ids are opaque digests ``{component}-{hex}``.

    Planted in the train pool only (seeded), as shares of the final pool (``round(rate * n_train)`` each):
    ``duplicate_rate`` near-duplicate copies with a few words changed (``dup_group``, ``is_duplicate``) and
    ``junk_rate`` junk documents (``is_junk``): shuffled words, repeated boilerplate lines or keyword spam.
    Planted documents take the domain of the document they are made from, so no non-oracle field tells
    them apart. ``max_train`` caps the final train pool (the real documents are subsampled first).
    """
    if not isinstance(components, Mapping) or not components:
        raise ConfigError(
            f"text_mix components={components!r} is invalid: expected a non-empty mapping name -> "
            "{dataset, params, max_docs}"
        )
    duplicate_rate, junk_rate = _check_rates(duplicate_rate, junk_rate)
    max_train = _check_count(max_train, "text_mix max_train")
    train: list[Example] = []
    validation: list[Example] = []
    test: list[Example] = []
    component_info: dict[str, Any] = {}
    for name, spec in components.items():
        splits, max_docs, domain = _load_component(name, spec, seed)
        if splits.task != "lm":
            raise ConfigError(
                f"text_mix component {name!r} is a {splits.task!r} dataset: expected a text dataset"
            )
        pool = subsample(splits.train, max_docs, seed, name=f"text_mix components.{name}.max_docs")
        train.extend(_relabel(name, ex, domain, train=True) for ex in pool)
        validation.extend(_relabel(name, ex, domain, train=False) for ex in splits.validation)
        test.extend(_relabel(name, ex, domain, train=False) for ex in splits.test)
        component_info[name] = {
            "dataset": spec["dataset"],
            "sizes": {"train": len(pool), "validation": len(splits.validation), "test": len(splits.test)},
            "info": splits.info,
        }
    train = subsample(train, _clean_budget(len(train), max_train, duplicate_rate, junk_rate), seed)
    n_duplicates, n_junk = planted_counts(len(train), duplicate_rate, junk_rate)
    train, planted = plant_defects(train, n_duplicates, n_junk, random.Random(f"text_mix/{seed}/plant"))
    check_unique_ids(
        "text_mix", (*train, *validation, *test), "unique ids (component names and document ids)"
    )
    info = {
        "components": component_info,
        "duplicate_rate": duplicate_rate,
        "junk_rate": junk_rate,
        "seed": seed,
        **planted,
        "domains": domain_counts(train),
    }
    return DatasetSplits(name="text_mix", task="lm", train=train, validation=validation, test=test, info=info)
