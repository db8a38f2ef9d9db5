"""Stable hashes of selections and texts."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence


def ids_sha256(ids: Iterable[str]) -> str:
    """sha256 of the sorted ids joined by newlines: the same set gives the same hash whatever its order."""
    return hashlib.sha256("\n".join(sorted(ids)).encode("utf-8")).hexdigest()


def texts_sha256(texts: Iterable[str]) -> str:
    """sha256 of texts in the given order (an order-sensitive corpus fingerprint)."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def json_sha256(obj: object) -> str:
    """sha256 of ``obj`` as JSON with sorted keys: a cache key for a dict of everything an artefact depends
    on (the same as :func:`texts_sha256` of that one JSON text)."""
    return texts_sha256([json.dumps(obj, sort_keys=True)])


def id_hash_order(ids: Sequence[str]) -> list[int]:
    """Positions of ``ids`` sorted by a hash of each id: a fixed pseudo-random order for breaking exact ties
    that does not depend on the pool's order or on any seed."""
    keys = [hashlib.sha256(i.encode("utf-8")).digest()[:8] for i in ids]
    return sorted(range(len(keys)), key=keys.__getitem__)
