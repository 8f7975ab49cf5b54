"""One generic registry: exact lookup, "did you mean", fnmatch listing, plug-ins by entry point.

Every id table in vlm-swap (encoder kinds, connectors, LLM families, sources, catalog) is a
``Registry``. Ids are exact and kebab-case; an unknown id raises with the closest matches and the
list of known ids. Third-party packages add entries through the ``vlm_swap.plugins`` entry-point
group: each entry point names a callable that is called once with no arguments and registers
what it brings (e.g. ``ENCODERS.register("my-vit", MyBackend)``).

An entry whose module is costly to import (an encoder backend: torch, transformers, its own library) is
registered as ``Lazy("module:attribute", listed)``: the first lookup imports it, and listings show
``listed`` (an object with the attributes they read) until then, as transformers' lazy auto mappings
keep class names until a class is asked for. So ``vlm-swap list`` imports none of those modules.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Generic, TypeVar

from .errors import VlmSwapError

T = TypeVar("T")
_ID = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")
PLUGIN_GROUP = "vlm_swap.plugins"
_plugins_loaded = False


class UnknownIdError(VlmSwapError, KeyError):
    """An id that is not registered; the message lists the closest ids."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


@dataclass(frozen=True)
class Lazy:
    """An entry imported on first lookup: ``target`` is ``"module:attribute"``; ``listed`` stands in for it in
    listings until then."""

    target: str
    listed: Any

    def load(self) -> Any:
        module, _, attribute = self.target.partition(":")
        return getattr(importlib.import_module(module), attribute)


class Registry(Generic[T]):
    """A named table of ``id -> entry``, refusing duplicates and suggesting close ids."""

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, id: str, entry: T | Lazy) -> T | Lazy:
        if not _ID.match(id):
            raise ValueError(f"{self.what} id {id!r} must be lower-case kebab-case (letters, digits, '-', '.')")
        if id in self._entries:
            raise ValueError(f"{self.what} {id!r} is already registered")
        self._entries[id] = entry
        return entry

    def get(self, id: str) -> T:
        load_plugins()
        try:
            entry = self._entries[id]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise UnknownIdError(
                f"unknown {self.what} {id!r}{did_you_mean(id, self._entries)} (known: {known})"
            ) from None
        if isinstance(entry, Lazy):
            entry = self._entries[id] = entry.load()
        return entry

    def close_ids(self, id: str) -> list[str]:
        """The registered ids closest to ``id`` (for a "did you mean" where ``id`` failed as something else)."""
        load_plugins()
        return close_matches(id, self._entries)

    def __contains__(self, id: object) -> bool:
        load_plugins()
        return id in self._entries

    def ids(self, pattern: str = "*") -> list[str]:
        load_plugins()
        return sorted(i for i in self._entries if fnmatch.fnmatchcase(i, pattern))

    def items(self, pattern: str = "*") -> Iterator[tuple[str, T]]:
        for i in self.ids(pattern):
            yield i, self.get(i)

    def listed(self, pattern: str = "*") -> Iterator[tuple[str, Any]]:
        """Like ``items``, without importing lazy entries: their ``listed`` stands in for them."""
        for i in self.ids(pattern):
            entry = self._entries[i]
            yield i, entry.listed if isinstance(entry, Lazy) else entry

    def __len__(self) -> int:
        return len(self._entries)


def close_matches(word: str, choices: Iterable[str]) -> list[str]:
    """Up to three of ``choices`` that look like ``word``, closest first."""
    return difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean a, b?"`` for the choices close to ``word``, else ``""``."""
    close = close_matches(word, choices)
    return f"; did you mean {', '.join(close)}?" if close else ""


def load_plugins() -> None:
    """Call every ``vlm_swap.plugins`` entry point once (idempotent)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in metadata.entry_points(group=PLUGIN_GROUP):
        try:
            ep.load()()
        except Exception as exc:  # a broken plug-in must not break the built-in registries
            raise VlmSwapError(f"plug-in {ep.name!r} ({ep.value}) failed to register: {exc}") from exc
