"""SlimPajama (Cerebras, 627B tokens; ``cerebras/SlimPajama-627B`` on the Hugging Face hub), the pre-training
pool of multi-agent collaborative selection (Bai et al., arXiv 2410.08102, Sec. 4.1), for the ``lm`` task.

Each record is ``{"text": ..., "meta": {"redpajama_set_name": "RedPajamaCommonCrawl"}}``; the set name without
its ``RedPajama`` prefix becomes ``meta.domain`` (the paper's seven domains: ``CommonCrawl``, ``C4``,
``Github``, ``Book``, ``ArXiv``, ``Wikipedia``, ``StackExchange``), which the multi-agent method's domain
agent reads. Documents are streamed from the hub (``datasets`` with ``streaming=True``, the first
``max_docs`` of ``split``), so a run needs network: with ``offline=true`` (the root default) the loader
refuses in one line before anything is read. Local JSON Lines files in the same format (``data_files``) need
no network. Validation and test are carved from the documents, stratified by domain.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from p3bench.data.example import DatasetSplits
from p3bench.data.records import read_source
from p3bench.data.text import documents_by_split, domain_counts, lm_splits, stream_hub_records
from p3bench.errors import ConfigError, DataError

HUB_ID = "cerebras/SlimPajama-627B"
SET_NAME_PREFIX = "RedPajama"
#: environment switches under which the hub cannot be reached
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def domain_of(set_name: str) -> str:
    """``"RedPajamaCommonCrawl"`` -> ``"CommonCrawl"`` (a name without the prefix is kept as it is)."""
    return set_name.removeprefix(SET_NAME_PREFIX) or set_name


def _extract(record: dict) -> tuple[str, str] | str:
    text = record.get("text")
    if not isinstance(text, str):
        return f"field 'text' is {type(text).__name__}: expected the document text as a string"
    meta = record.get("meta")
    set_name = meta.get("redpajama_set_name") if isinstance(meta, dict) else None
    if not isinstance(set_name, str):
        return "record has no meta.redpajama_set_name: expected the SlimPajama source set there"
    return text, domain_of(set_name)


def _validate(record: dict) -> str | None:
    result = _extract(record)
    return result if isinstance(result, str) else None


def _check_offline(hub_id: str, offline: bool) -> None:
    switched = [name for name in OFFLINE_ENV if os.environ.get(name, "").lower() in ("1", "true", "yes")]
    if offline or switched:
        why = "offline=true" if offline else f"{switched[0]}=1"
        raise ConfigError(
            f"dataset slimpajama streams {hub_id!r} from the hub and {why}: expected offline=false on a machine "
            "with network, or dataset.params.data_files= local SlimPajama .jsonl files"
        )


def load_slimpajama(
    data_files: Any = None,
    hub_id: str | None = HUB_ID,
    hub_config: str | None = None,
    split: str = "train",
    max_docs: int | None = None,
    val_size: int | float = 0.01,
    test_size: int | float = 0.01,
    seed: int = 0,
    max_train: int | None = None,
    skip_bad: bool = False,
    offline: bool = True,
) -> DatasetSplits:
    """SlimPajama documents with their source set as ``meta.domain`` (see the module docstring).

    From the hub (``hub_id``, the first ``max_docs`` documents of ``split``, required: the corpus holds
    about 590 million) unless ``data_files`` names local files, which are then read instead (``hub_id`` is
    ignored). ``offline`` is the run's switch: streaming refuses under it, naming what to set.
    """
    if data_files is None:
        if not isinstance(hub_id, str) or not hub_id.strip():
            raise ConfigError(
                f"dataset slimpajama: hub_id={hub_id!r} and no data_files: expected {HUB_ID!r} or local files"
            )
        _check_offline(hub_id, bool(offline))
        records, skipped = stream_hub_records(
            "slimpajama", hub_id, hub_config, split, max_docs, _validate, skip_bad
        )
        sources, source = {"train": records}, f"hub:{hub_id}"
    else:
        sources, skipped, _ = read_source(
            "slimpajama", data_files=data_files, required=(), skip_bad=skip_bad, validate=_validate
        )
        source = Path(data_files).name if isinstance(data_files, (str, Path)) else "local files"
        if max_docs is not None:
            sources["train"] = sources["train"][: int(max_docs)]
    documents, n_empty = documents_by_split("slimpajama", sources, _extract, dict.fromkeys(sources, source))
    if not documents.get("train"):
        raise DataError(f"dataset slimpajama: {source} gave no non-empty document: expected at least one")
    info = {
        "source": source,
        "n_skipped": skipped,
        "n_empty": n_empty,
        "domains": domain_counts(ex for rows in documents.values() for ex in rows),
    }
    return lm_splits(
        "slimpajama",
        documents,
        val_size=val_size,
        test_size=test_size,
        seed=seed,
        max_train=max_train,
        stratify_key=lambda ex: ex.meta["domain"],
        info=info,
    )
