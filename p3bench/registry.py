"""Typed name -> object registries with a decorator, lazy entries and helpful errors.

An unknown name raises :class:`ConfigError` listing the known names and suggesting the closest one, so a
typo in ``method=randm`` says ``did you mean 'random'?``.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from p3bench.errors import ConfigError

T = TypeVar("T")


def closest(name: str, known: list[str]) -> str | None:
    """The known name closest to ``name``, or None when nothing is reasonably close."""
    matches = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_name_message(kind: str, name: object, known: list[str]) -> str:
    """One line: the bad name, the known names, and the closest suggestion."""
    hint = closest(str(name), known)
    suggestion = f"; did you mean {hint!r}?" if hint else ""
    return f"unknown {kind} {name!r}: expected one of {', '.join(sorted(known))}{suggestion}"


class Registry(Generic[T]):
    """A registry of named entries of one kind (methods, datasets, evaluators, scorers).

    Entries are added with the :meth:`register` decorator, or lazily as ``"module:attribute"`` strings so
    that heavy backends are imported only when used.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._lazy: dict[str, str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered to {self._entries[name]!r}")
            self._entries[name] = obj
            return obj

        return decorator

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``name`` to ``"package.module:attribute"``, imported on first :meth:`get`."""
        self._lazy[name] = target

    def names(self) -> list[str]:
        return sorted(set(self._entries) | set(self._lazy))

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> T:
        if name in self._entries:
            return self._entries[name]
        if name in self._lazy:
            module_name, attribute = self._lazy[name].split(":")
            obj = getattr(importlib.import_module(module_name), attribute)
            self._entries[name] = obj
            return obj
        raise ConfigError(unknown_name_message(self.kind, name, self.names()))
