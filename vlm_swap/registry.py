"""One generic registry: exact lookup, "did you mean", fnmatch listing, plug-ins by entry point.

Every id table in vlm-swap (encoder kinds, connectors, LLM families, sources, catalog) is a
``Registry``. Ids are exact and kebab-case; an unknown id raises with the closest matches and the
list of known ids. Third-party packages add entries through the ``vlm_swap.plugins`` entry-point
group: each entry point names a callable that is called once with no arguments and registers
what it brings (e.g. ``ENCODERS.register("my-vit", MyBackend)``).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable, Iterator
from importlib import metadata
from typing import Generic, TypeVar

from .errors import VlmSwapError

T = TypeVar("T")
_ID = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")
PLUGIN_GROUP = "vlm_swap.plugins"
_plugins_loaded = False


class UnknownIdError(VlmSwapError, KeyError):
    """An id that is not registered; the message lists the closest ids."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class Registry(Generic[T]):
    """A named table of ``id -> entry``, refusing duplicates and suggesting close ids."""

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, id: str, entry: T) -> T:
        if not _ID.match(id):
            raise ValueError(f"{self.what} id {id!r} must be lower-case kebab-case (letters, digits, '-', '.')")
        if id in self._entries:
            raise ValueError(f"{self.what} {id!r} is already registered")
        self._entries[id] = entry
        return entry

    def get(self, id: str) -> T:
        load_plugins()
        try:
            return self._entries[id]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise UnknownIdError(
                f"unknown {self.what} {id!r}{did_you_mean(id, self._entries)} (known: {known})"
            ) from None

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
            yield i, self._entries[i]

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
