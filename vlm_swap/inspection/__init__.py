"""``vlm-swap inspect``: what a checkpoint is made of, from its config alone.

A catalog model is answered from the catalog's stored reports, with neither torch nor transformers
imported; anything else (a local dir, a hub id, a plug-in's catalog entry) is built on the meta
device by ``inspection.meta``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..catalog import CATALOG, stored_report


def catalog_report(source: str) -> dict[str, Any] | None:
    """The stored report of the catalog model ``source`` names; None when it names none (or a local path of
    that name shadows it) or the entry's report is not stored (a plug-in's). A catalog model without an
    architecture is refused here, as building it would be."""
    # A catalog id starts with a letter or a digit and has no '/': of checkpoints.resolve.looks_local's tests,
    # only "the path exists" can hold for it.
    if source not in CATALOG or Path(source).exists():
        return None
    entry = CATALOG.get(source)
    entry.published_config()
    return stored_report(entry.id)


def inspect_source(source: str, *, trust_remote_code: bool = False) -> dict[str, Any]:
    """A JSON-able report of a source VLM, an upgraded vlm-swap model, or a catalog model (offline)."""
    report = catalog_report(source)
    if report is None:
        from .meta import inspect_built

        report = inspect_built(source, trust_remote_code=trust_remote_code)
    return report
