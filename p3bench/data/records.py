"""Raw records: local JSON / JSON Lines files or a Hugging Face hub dataset -> validated dicts; splitting.

Adapters (``p3bench.data.math``, ``p3bench.data.gsm8k``, ...) read their records here and turn them into
:class:`~p3bench.data.example.Example` objects. Every problem with a record is reported as one line naming the
file and the 1-based line number (``.jsonl``) or the 0-based list index (``.json``), unless ``skip_bad=True``,
in which case bad records are skipped, counted and summarised in one warning.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import numbers
import random
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from p3bench.data.example import DatasetSplits, Example
from p3bench.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

#: ``validate(record) -> None`` when the record is usable, else a short reason (``"'level' is not a string"``).
Validator = Callable[[dict], "str | None"]

_SUFFIXES = (".jsonl", ".json")


def _expand(data_files: str | Path | Sequence[str | Path]) -> list[Path]:
    """The files named by one path, a glob pattern, or a list of them, in the given order (globs sorted)."""
    if isinstance(data_files, (str, Path)):
        items: list[str | Path] = [data_files]
    elif isinstance(data_files, Iterable) and not isinstance(data_files, Mapping):
        items = list(data_files)
    else:
        raise ConfigError(
            f"data_files={data_files!r} is not usable here: expected a path, a glob pattern or a list of paths"
        )
    if not items:
        raise ConfigError("data_files is an empty list: expected at least one .jsonl or .json file")
    paths: list[Path] = []
    for item in items:
        if not isinstance(item, (str, Path)):
            raise ConfigError(
                f"data_files entry {item!r} is not a path: expected a .jsonl or .json file path"
            )
        path = Path(item).expanduser()
        if not path.exists() and any(char in str(item) for char in "*?["):
            matches = sorted(glob.glob(str(path)))
            if not matches:
                raise DataError(
                    f"data_files pattern {str(item)!r} matches no file (resolved from {Path.cwd()})"
                )
            paths.extend(Path(match) for match in matches)
        else:
            paths.append(path)
    return paths


def _check_required(record: Any, required: Sequence[str], validate: Validator | None) -> str | None:
    """None when ``record`` is an object with every required field, else the reason it is not."""
    if not isinstance(record, dict):
        return f"record is a JSON {type(record).__name__}, not an object (expected fields: {', '.join(required)})"
    for name in required:
        if name not in record:
            return f"record is missing required field {name!r} (expected fields: {', '.join(required)})"
        if record[name] is None:
            return f"record has null in required field {name!r} (expected fields: {', '.join(required)})"
    if validate is not None:
        return validate(record)
    return None


def _check_path(path: Path) -> None:
    if not path.exists():
        raise DataError(f"data file not found: {path} (resolved to {path.resolve()})")
    if path.is_dir():
        raise DataError(f"data file {path} is a directory: expected a .jsonl or .json file")
    if path.suffix.lower() not in _SUFFIXES:
        raise DataError(
            f"data file {path} has suffix {path.suffix!r}: expected one of {', '.join(_SUFFIXES)}"
        )


def _raw_items(path: Path) -> Iterable[tuple[str, Any, str | None]]:
    """``(location, record_or_None, parse_error_or_None)`` for each record of one file."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        yield from _json_items(path)
        return
    try:
        with path.open(encoding="utf-8-sig") as handle:
            yield from _json_lines(path, handle)
    except UnicodeDecodeError as err:
        raise DataError(
            f"data file {path} is not UTF-8 text ({err.reason}): expected UTF-8 JSON Lines"
        ) from err


def _json_lines(path: Path, lines: Iterable[str]) -> Iterable[tuple[str, Any, str | None]]:
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield f"{path} line {line_number}", json.loads(line), None
        except json.JSONDecodeError as err:
            yield f"{path} line {line_number}", None, f"malformed JSON ({err.msg} at column {err.colno})"


def _json_items(path: Path) -> Iterable[tuple[str, Any, str | None]]:
    """A ``.json`` file: a JSON list of objects, or JSON Lines under a ``.json`` name (a common misnaming)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"data file {path} is not UTF-8 text ({err.reason}): expected UTF-8 JSON") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if text.lstrip().startswith("{") and err.msg == "Extra data":
            yield from _json_lines(path, text.split("\n"))
            return
        raise DataError(
            f"{path} line {err.lineno}: malformed JSON ({err.msg} at column {err.colno}); "
            "expected a JSON list of objects"
        ) from err
    if not isinstance(data, list):
        raise DataError(
            f"{path} holds a JSON {type(data).__name__}: expected a JSON list of objects (or JSON Lines)"
        )
    for index, record in enumerate(data):
        yield f"{path} index {index}", record, None


def _collect(
    items: Iterable[tuple[str, Any, str | None]],
    required: Sequence[str],
    skip_bad: bool,
    validate: Validator | None,
    source: str,
) -> tuple[list[dict], int]:
    records: list[dict] = []
    skipped = 0
    first_problem = ""
    for location, record, parse_error in items:
        problem = parse_error or _check_required(record, required, validate)
        if problem is None:
            records.append(record)
            continue
        if not skip_bad:
            raise DataError(f"{location}: {problem}; pass skip_bad=true to skip bad records")
        skipped += 1
        first_problem = first_problem or f"{location}: {problem}"
    if skipped:
        logger.warning(
            "skipped %d bad record(s) in %s (skip_bad=true); the first: %s", skipped, source, first_problem
        )
    return records, skipped


def read_records(
    data_files: str | Path | Sequence[str | Path],
    *,
    required: Sequence[str],
    skip_bad: bool = False,
    validate: Validator | None = None,
) -> tuple[list[dict], int]:
    """Read the records of local ``.jsonl`` files (one JSON object a line; blank lines ignored) and ``.json``
    files (a JSON list of objects; a ``.json`` file holding JSON Lines is read as JSON Lines).

    ``data_files`` is a path, a glob pattern or a list of them; records come in file order. A record must be
    an object holding every ``required`` field (not null) and pass ``validate`` when given. A malformed line
    or a bad record raises :class:`DataError` naming the file and line (or list index), unless ``skip_bad``:
    then it is skipped and counted, and one warning gives the count. A missing file always raises.

    Returns ``(records, n_skipped)``.
    """
    paths = _expand(data_files)
    for path in paths:
        _check_path(path)
    items = (item for path in paths for item in _raw_items(path))
    source = str(paths[0]) if len(paths) == 1 else f"{len(paths)} files ({paths[0]}, ...)"
    return _collect(items, required, skip_bad, validate, source)


def load_hub_records(
    hub_id: str,
    split: str,
    config_name: str | None,
    required: Sequence[str],
    skip_bad: bool,
    validate: Validator | None = None,
) -> tuple[list[dict], int]:
    """The records of one split of a Hugging Face hub dataset, through ``datasets.load_dataset``.

    For users with network access (or a populated ``datasets`` cache). Any loading failure becomes one
    :class:`DataError` line; bad records are handled as in :func:`read_records` (location ``row N``).
    """
    try:
        import datasets

        dataset = datasets.load_dataset(hub_id, config_name, split=split)
    except Exception as err:  # offline, unknown id, missing config or split: all say the same to the user
        reason = " ".join(str(err).split())[:300]
        config = f" config {config_name!r}" if config_name else ""
        raise DataError(
            f"hub dataset {hub_id!r}{config} split {split!r} could not be loaded ({type(err).__name__}: {reason}); "
            "expected a reachable or cached hub id, or set data_files= to local .jsonl/.json files instead"
        ) from err
    source = f"hub dataset {hub_id!r} split {split!r}"
    items = ((f"{source} row {index}", dict(row), None) for index, row in enumerate(dataset))
    return _collect(items, required, skip_bad, validate, source)


_SPLIT_NAMES = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}


def read_source(
    dataset: str,
    *,
    data_files: str | Path | Sequence | Mapping | None = None,
    hub_id: str | None = None,
    hub_config: str | None = None,
    split: str = "train",
    test_split: str | None = None,
    required: Sequence[str],
    skip_bad: bool = False,
    validate: Validator | None = None,
) -> tuple[dict[str, list[dict]], int, str]:
    """An adapter's raw records by split, from exactly one of ``data_files`` and ``hub_id``.

    ``data_files`` is a path, glob or list (all of it is the ``"train"`` source), or a mapping with a
    ``train`` key and optional ``validation`` (or ``val``) and ``test`` keys, each a path, glob or list. With
    ``hub_id``, ``split`` is the train source and ``test_split``, when set, the test source.

    Returns ``({"train": [...], maybe "validation": [...], "test": [...]}, n_skipped, description)``.
    """
    if (data_files is None) == (hub_id is None):
        got = "both" if data_files is not None else "neither"
        raise ConfigError(
            f"{dataset}: got {got} of data_files and hub_id: expected exactly one, data_files= (local .jsonl/.json "
            "files) or hub_id= (a Hugging Face dataset id)"
        )
    sources: dict[str, list[dict]] = {}
    skipped = 0
    if hub_id is not None:
        if not isinstance(hub_id, str) or not hub_id.strip():
            raise ConfigError(
                f"{dataset}: hub_id={hub_id!r} is not a dataset id: expected e.g. 'openai/gsm8k'"
            )
        splits = {"train": split} if test_split is None else {"train": split, "test": test_split}
        for name, hub_split in splits.items():
            sources[name], n = load_hub_records(hub_id, hub_split, hub_config, required, skip_bad, validate)
            skipped += n
        return sources, skipped, f"hub:{hub_id}" + (f"/{hub_config}" if hub_config else "")
    if isinstance(data_files, Mapping):
        unknown = [key for key in data_files if key not in _SPLIT_NAMES]
        if unknown or "train" not in data_files:
            raise ConfigError(
                f"{dataset}: data_files has keys {sorted(map(str, data_files))}: expected 'train' and optionally "
                "'validation' (or 'val') and 'test'"
            )
        named = {_SPLIT_NAMES[key]: value for key, value in data_files.items()}
    else:
        named = {"train": data_files}
    for name, files in named.items():
        sources[name], n = read_records(files, required=required, skip_bad=skip_bad, validate=validate)
        skipped += n
    description = ", ".join(f"{name}={files}" for name, files in named.items())
    return sources, skipped, description


def subsample(items: Sequence[Any], max_items: int | None, seed: int, name: str = "max_train") -> list:
    """At most ``max_items`` of ``items``: a seeded random subset kept in input order (all when None)."""
    if max_items is None:
        return list(items)
    if isinstance(max_items, bool) or not isinstance(max_items, numbers.Integral) or max_items < 1:
        raise ConfigError(f"{name}={max_items!r} is invalid: expected a count >= 1 or null for all")
    if max_items >= len(items):
        return list(items)
    keep = set(random.Random(f"subsample/{seed}").sample(range(len(items)), int(max_items)))
    return [item for index, item in enumerate(items) if index in keep]


# --------------------------------------------------------------------------------------------------- splits


def _split_count(size: int | float, n: int, name: str) -> int:
    """A split size given as a count (int >= 0) or a fraction (float in [0, 1)) -> a count."""
    if isinstance(size, bool) or not isinstance(size, numbers.Real):
        raise ConfigError(
            f"{name}={size!r} is not a number: expected a count (int >= 0) or a fraction in [0, 1)"
        )
    if not isinstance(size, numbers.Integral):
        size = float(size)
        if math.isnan(size) or size < 0:
            raise ConfigError(
                f"{name}={size!r} is out of range: expected a fraction in [0, 1) or a count >= 0"
            )
        if size < 1:
            return round(size * n)
        if not size.is_integer():
            raise ConfigError(f"{name}={size!r} is neither a fraction in [0, 1) nor a whole count")
        return int(size)
    if size < 0:
        raise ConfigError(f"{name}={size!r} is negative: expected a count >= 0 or a fraction in [0, 1)")
    return int(size)


def _largest_remainder(total: int, weights: list[int]) -> list[int]:
    """``total`` apportioned over strata proportionally to ``weights`` (Hamilton's method; ties to the first)."""
    weight_sum = sum(weights)
    if total == 0 or weight_sum == 0:
        return [0] * len(weights)
    quotas = [total * w / weight_sum for w in weights]
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(len(weights)), key=lambda s: (-(quotas[s] - counts[s]), s))
    for s in order[: total - sum(counts)]:
        counts[s] += 1
    return counts


def _stratum_order(key: Hashable) -> tuple:
    return (key is None, type(key).__name__, key if isinstance(key, (int, float)) else 0, repr(key))


def make_splits(
    items: Sequence[Any],
    *,
    val_size: int | float,
    test_size: int | float,
    seed: int,
    stratify_key: Callable[[Any], Hashable] | None = None,
) -> tuple[list, list, list]:
    """Split ``items`` (records or examples) into ``(train, validation, test)``, deterministically.

    Sizes are counts (int) or fractions of ``len(items)`` (float in [0, 1)). With ``stratify_key`` (e.g.
    ``lambda ex: ex.meta["level"]``) each stratum contributes to validation and test in proportion to its
    size (largest-remainder rounding, so the totals are exact). The same items and seed give the same
    splits; each split keeps the input order. At least one item must remain for training.
    """
    n = len(items)
    n_test = _split_count(test_size, n, "test_size")
    n_val = _split_count(val_size, n, "val_size")
    if n_val + n_test >= n:
        raise ConfigError(
            f"val_size={val_size!r} + test_size={test_size!r} ({n_val} + {n_test}) leave no training examples "
            f"out of {n}: expected val + test < {n}"
        )
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    strata: dict[Hashable, list[int]] = defaultdict(list)
    for index in order:
        strata[stratify_key(items[index]) if stratify_key is not None else None].append(index)
    keys = sorted(strata, key=_stratum_order)
    sizes = [len(strata[key]) for key in keys]
    test_counts = _largest_remainder(n_test, sizes)
    val_counts = _largest_remainder(n_val, [size - t for size, t in zip(sizes, test_counts, strict=True)])
    test_ids: set[int] = set()
    val_ids: set[int] = set()
    for key, n_stratum_test, n_stratum_val in zip(keys, test_counts, val_counts, strict=True):
        members = strata[key]
        test_ids.update(members[:n_stratum_test])
        val_ids.update(members[n_stratum_test : n_stratum_test + n_stratum_val])
    train = [items[i] for i in range(n) if i not in test_ids and i not in val_ids]
    validation = [items[i] for i in range(n) if i in val_ids]
    test = [items[i] for i in range(n) if i in test_ids]
    return train, validation, test


def check_unique_ids(name: str, examples: Iterable[Example], expected: str) -> None:
    """A one-line :class:`DataError` naming the first id that occurs twice across ``examples``."""
    seen: set[str] = set()
    for ex in examples:
        if ex.id in seen:
            raise DataError(f"{name}: example id {ex.id!r} occurs twice: expected {expected}")
        seen.add(ex.id)


def carve_splits(
    name: str,
    sources: Mapping[str, list[Example]],
    *,
    val_size: int | float,
    test_size: int | float,
    seed: int,
    max_train: int | None,
    stratify_key: Callable[[Any], Hashable] | None,
    carvable: Callable[[Example], bool],
    what: str,
    ids_expected: str,
) -> tuple[list[Example], list[Example], list[Example]]:
    """``(train, validation, test)`` from examples by source split (``"train"``, maybe ``"validation"``,
    ``"test"``): given splits are used as they are, missing ones carved from the train examples ``carvable``
    accepts with :func:`make_splits` (the others stay in train, in pool order). ``max_train`` then caps the
    train pool (:func:`subsample`). Ids must be unique across all splits. ``what`` names the carvable
    examples in a split error, ``ids_expected`` what the ids should be in a duplicate-id error."""
    pool = sources["train"]
    candidates = [ex for ex in pool if carvable(ex)]
    position = {id(ex): i for i, ex in enumerate(pool)}
    try:
        train, validation, test = make_splits(
            candidates,
            val_size=0 if "validation" in sources else val_size,
            test_size=0 if "test" in sources else test_size,
            seed=seed,
            stratify_key=stratify_key,
        )
    except ConfigError as err:
        raise ConfigError(f"{name} ({len(candidates)} {what} to split): {err}") from None
    # make_splits keeps the input order; the examples that could not be carved join train in pool order
    train = sorted(train + [ex for ex in pool if not carvable(ex)], key=lambda ex: position[id(ex)])
    validation = sources.get("validation", validation)
    test = sources.get("test", test)
    train = subsample(train, max_train, seed)
    check_unique_ids(name, (*train, *validation, *test), ids_expected)
    return train, validation, test


def assemble_splits(
    name: str,
    sources: dict[str, list[Example]],
    *,
    val_size: int | float,
    test_size: int | float,
    seed: int,
    max_train: int | None,
    stratify_key: Callable[[Any], Hashable] | None,
    info: dict,
    task: str = "qa",
) -> DatasetSplits:
    """An adapter's :class:`DatasetSplits` from its examples by source split (:func:`carve_splits`), with
    validation and test carved from the examples that have an answer only (the others stay in train)."""
    train, validation, test = carve_splits(
        name,
        sources,
        val_size=val_size,
        test_size=test_size,
        seed=seed,
        max_train=max_train,
        stratify_key=stratify_key,
        carvable=lambda ex: ex.answer is not None,
        what="examples with an answer",
        ids_expected="unique ids (unique_id fields)",
    )
    info = {
        **info,
        "n_no_answer": sum(ex.answer is None for ex in sources["train"]),
        "test_from": "given" if "test" in sources else "train",
        "validation_from": "given" if "validation" in sources else "train",
    }
    return DatasetSplits(name=name, task=task, train=train, validation=validation, test=test, info=info)
