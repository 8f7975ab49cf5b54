"""A catalog of well-known models: id -> hub id and the facts listings, pair checks and ``inspect`` need offline.

The entries are data: one YAML file per model family beside this module (``qwen3.yaml``, ``llava.yaml``,
...) maps catalog ids to the fields of ``CatalogEntry``, checked as the files load (an unknown, missing or
mistyped key is one error naming the file, the id and the key). Facts are from the models' published
configs: the width whose hidden states cross over (``hidden_size``: the perceiver's LM width, a ViT's
width, an LLM's width), tokens per image at the default resolution (perceivers at 512x512 = 262,144
pixels, DPA's training cap, without their two boundary rows; ViTs at their own resolution), the context
length of LLMs, and the text family (which decides "same family" in pair checks). ``arch`` is the
published config (model_type + sizes), from which ``inspect`` builds the full-size model on the meta
device; what that build reports is stored once in ``reports.json`` (``python -m vlm_swap.inspection.meta``
writes it; ``tests/test_catalog.py`` rebuilds every report and compares), so listing, pairing and
inspecting catalog models import neither torch nor transformers.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..errors import VlmSwapError
from ..registry import Registry

if TYPE_CHECKING:
    from transformers import PreTrainedConfig

HERE = Path(__file__).resolve().parent
REPORTS = HERE / "reports.json"
ROLES = ("perceiver", "vit", "llm", "vlm")


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    hub_id: str
    role: str  # "perceiver" | "vit" | "llm" | "vlm"
    family: str  # text family for perceivers/LLMs/VLMs, tower family for ViTs
    hidden_size: int
    tokens_per_image: int = 0
    context: int = 0
    encoder_kind: str = ""  # for perceivers/ViTs: the encoder kind that loads it
    arch: dict | None = None  # the published config (model_type + sizes): builds the model on the meta device
    boundaries: bool = True  # perceivers: a marker row before and after the image rows (LLaVA-OneVision has none)

    @property
    def spec(self) -> str:
        return f"{self.encoder_kind}:{self.id}" if self.encoder_kind else self.id

    def published_config(self) -> dict:
        """``arch``; a catalog model without one is refused here, before anything is imported for it."""
        if self.arch is None:
            raise VlmSwapError(f"the catalog has no architecture for {self.id}; inspect {self.hub_id} instead")
        return self.arch

    def config(self) -> PreTrainedConfig:
        """The full-size architecture as a transformers config (no download)."""
        arch = copy.deepcopy(self.published_config())  # transformers fills in sub-config dicts it is given
        from transformers import AutoConfig

        from ..format.compat import hf_architecture

        model_type = arch.pop("model_type")
        cfg = AutoConfig.for_model(model_type, **arch)
        task = self.role if self.role in ("llm", "vit") else "image-text-to-text"
        cfg.architectures = [hf_architecture(task, model_type)]
        return cfg


_FIELDS = {f.name: f for f in dataclasses.fields(CatalogEntry) if f.name != "id"}
_TYPES = {"str": str, "int": int, "bool": bool, "dict | None": dict}
_REQUIRED = [name for name, f in _FIELDS.items() if f.default is dataclasses.MISSING]


class _Loader(yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML itself keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen and key != "<<":
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def entry_from_data(id: str, raw: Any, where: str) -> CatalogEntry:
    """One catalog entry from its YAML mapping; ``where`` (the file) starts every error."""
    if not isinstance(raw, dict):
        raise VlmSwapError(f"{where}: {id}: expected a mapping of catalog fields, got {raw!r}")
    if unknown := sorted(set(raw) - set(_FIELDS)):
        raise VlmSwapError(f"{where}: {id}: unknown key {unknown[0]!r} (known: {', '.join(_FIELDS)})")
    if missing := [name for name in _REQUIRED if name not in raw]:
        raise VlmSwapError(f"{where}: {id}: missing key {missing[0]!r}")
    for key, value in raw.items():
        expected = _TYPES[_FIELDS[key].type]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise VlmSwapError(f"{where}: {id}.{key}: expected {expected.__name__}, got {value!r}")
    if raw["role"] not in ROLES:
        raise VlmSwapError(f"{where}: {id}.role: {raw['role']!r} is not one of {', '.join(ROLES)}")
    if raw["role"] in ("perceiver", "vit") and not raw.get("encoder_kind"):
        raise VlmSwapError(f"{where}: {id}.encoder_kind: a {raw['role']} names the encoder kind that loads it")
    if "arch" in raw and not isinstance(raw["arch"].get("model_type"), str):
        raise VlmSwapError(f"{where}: {id}.arch.model_type: the published config names its model type")
    return CatalogEntry(id=id, **raw)


def load_file(path: Path) -> list[CatalogEntry]:
    """The entries of one family file."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except (OSError, yaml.YAMLError) as exc:
        raise VlmSwapError(f"{path}: cannot read the catalog file: {' '.join(str(exc).split())}") from exc
    if not isinstance(data, dict):
        raise VlmSwapError(f"{path}: expected a mapping of catalog id -> fields")
    return [entry_from_data(str(id), raw, str(path)) for id, raw in data.items()]


CATALOG: Registry[CatalogEntry] = Registry("catalog model")
#: the ids of the entries loaded from the family files (plug-ins add others to CATALOG)
BUILT_IN: list[str] = []
for _path in sorted(HERE.glob("*.yaml")):
    for _entry in load_file(_path):
        try:
            CATALOG.register(_entry.id, _entry)
        except ValueError as exc:  # a bad id, or one that another family file already has
            raise VlmSwapError(f"{_path}: {exc}") from None
        BUILT_IN.append(_entry.id)


@functools.cache
def _reports() -> dict[str, dict]:
    return json.loads(REPORTS.read_text(encoding="utf-8"))


def stored_report(id: str) -> dict | None:
    """What ``vlm-swap inspect ID`` reports for a built-in entry with an architecture (a copy), else None."""
    report = _reports().get(id)
    return copy.deepcopy(report) if report is not None else None
