"""Stable hashes of selections and texts."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


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
