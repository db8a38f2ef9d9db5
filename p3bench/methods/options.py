"""Checking a method's configuration options: one-line errors that name ``method.<key>`` and what was
expected."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from p3bench.errors import ConfigError


def choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` when it is one of ``choices``, else a one-line error naming ``method.<key>``."""
    if value not in choices:
        raise ConfigError(f"method.{key}={value!r} is not supported: expected one of {', '.join(choices)}")
    return str(value)


def merge_options(kind: str, defaults: Mapping[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options group ``method.<kind>``: ``defaults`` updated with ``given``; a key that is not in
    ``defaults`` is a one-line error."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"method.{kind} has unknown keys {unknown}: expected some of {sorted(defaults)}")
    return {**defaults, **given}
