"""Source layouts: where each family of existing VLMs keeps its parts (``adapters/*.yaml``).

A layout (``SourceLayout``) says, for one family of existing VLMs, which config keys hold the LLM
config, the vision config and the image token, how the LLM config becomes the config of a plain
causal LM (``llm_config``: rebuilt as another model type, keys inherited from the top level or
dropped, or read from a flat config.json that transformers' AutoConfig would misread), and which
weight-key prefixes belong to the LLM (with their renaming into a plain causal LM), the encoder and
the connector; the longest matching prefix decides. The layouts are declarative data, loaded and
checked once into ``SOURCES``; ``CAUSAL_LM`` is the layout of a bare LLM (``build``). Reading a
checkpoint through its layout is ``source``'s. (The files' folder keeps its name, ``adapters/``.)
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ..errors import VlmSwapError
from ..registry import Registry

if TYPE_CHECKING:
    from transformers import PreTrainedConfig


def data_dir(name: str) -> Path:
    """``adapters`` / ``recipes``: beside the package in a checkout, inside it in a wheel."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / name, here / "_data" / name):
        if candidate.is_dir():
            return candidate
    raise VlmSwapError(f"the {name}/ folder is missing from this installation of vlm-swap")


@dataclass(frozen=True)
class LLMConfigSpec:
    """How a source's LLM config becomes the config of a plain causal LM (``llm_config`` in a spec)."""

    flat: bool = False  # config.json's top level is the LLM config; recognised from the raw file by architecture
    model_type: str | dict[str, str] = ""  # rebuild as this model type ('' = keep); a dict maps architecture -> type
    inherit: tuple[str, ...] = ()  # top-level keys copied into the LLM config when it lacks them
    drop: tuple[str, ...] = ()  # fnmatch patterns of keys dropped; "parent.child*" reaches into a dict value

    @classmethod
    def from_dict(cls, raw: dict, where: Path) -> LLMConfigSpec:
        if unknown := set(raw) - {"flat", "model_type", "inherit", "drop"}:
            raise VlmSwapError(f"{where}: unknown keys under llm_config: {sorted(unknown)}")
        model_type = raw.get("model_type", "")
        if not isinstance(model_type, (str, dict)):
            raise VlmSwapError(f"{where}: llm_config.model_type must be a model type or a map architecture -> type")
        return cls(bool(raw.get("flat", False)), model_type, tuple(raw.get("inherit", ())), tuple(raw.get("drop", ())))

    @property
    def rebuilds(self) -> bool:
        return bool(self.flat or self.model_type or self.inherit or self.drop)

    def type_for(self, architectures, default: str) -> str:
        if isinstance(self.model_type, str):
            return self.model_type or default
        return next((self.model_type[a] for a in architectures or () if a in self.model_type), default)

    def kept(self, values: dict) -> dict:
        """``values`` without the dropped keys (also inside dict values for ``parent.child`` patterns)."""
        out = {}
        for key, value in values.items():
            if any(fnmatch.fnmatchcase(key, p) for p in self.drop if "." not in p):
                continue
            inner = [p.split(".", 1)[1] for p in self.drop if "." in p and p.split(".", 1)[0] == key]
            if inner and isinstance(value, dict):
                value = {k: v for k, v in value.items() if not any(fnmatch.fnmatchcase(k, p) for p in inner)}
            out[key] = value
        return out


@dataclass(frozen=True)
class SourceLayout:
    """Where one source family keeps its parts (see ``adapters/llava.yaml``)."""

    id: str
    help: str
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    config: dict[str, str]
    llm_prefixes: dict[str, str]
    encoder_prefixes: tuple[str, ...] = ()
    connector_prefixes: tuple[str, ...] = ()
    required_parts: tuple[str, ...] = ("llm",)  # parts whose weights a checkpoint of this layout must hold
    llm_config: LLMConfigSpec = LLMConfigSpec()
    chat_template: str | None = None  # used when neither the source's processor nor its tokenizer has one

    @classmethod
    def from_yaml(cls, path: Path) -> SourceLayout:
        raw = yaml.safe_load(path.read_text())
        known = {"id", "help", "architectures", "model_types", "config", "weights", "llm_config", "chat_template"}
        if unknown := set(raw) - known:
            raise VlmSwapError(f"{path}: unknown keys {sorted(unknown)}")
        w = raw.get("weights", {})
        if unknown := set(w) - {"llm", "encoder", "connector", "required"}:
            raise VlmSwapError(f"{path}: unknown keys under weights: {sorted(unknown)}")
        return cls(
            id=raw["id"],
            help=raw.get("help", ""),
            architectures=tuple(raw.get("architectures", ())),
            model_types=tuple(raw.get("model_types", ())),
            config=dict(raw.get("config", {})),
            llm_prefixes=dict(w.get("llm", {})),
            encoder_prefixes=tuple(w.get("encoder", ())),
            connector_prefixes=tuple(w.get("connector", ())),
            required_parts=tuple(w.get("required", ("llm",))),
            llm_config=LLMConfigSpec.from_dict(raw.get("llm_config", {}), path),
            chat_template=raw.get("chat_template"),
        )

    def matches(self, config: PreTrainedConfig) -> bool:
        archs = set(getattr(config, "architectures", None) or ())
        return bool(archs & set(self.architectures)) or config.model_type in self.model_types

    def _prefix(self, key: str) -> tuple[str, str] | None:
        """(part, prefix) of the longest prefix matching ``key`` (``model.visual.`` beats ``model.``)."""
        candidates = [("llm", p) for p in self.llm_prefixes]
        candidates += [("encoder", p) for p in self.encoder_prefixes]
        candidates += [("connector", p) for p in self.connector_prefixes]
        found = [c for c in candidates if key.startswith(c[1])]
        return max(found, key=lambda c: len(c[1])) if found else None

    def part_of(self, key: str) -> str | None:
        """Which part ('llm', 'encoder', 'connector') a source weight key belongs to."""
        found = self._prefix(key)
        return found[0] if found else None

    def llm_key(self, key: str) -> str | None:
        """The key inside the causal LM for an LLM weight of the source, or None."""
        found = self._prefix(key)
        if not found or found[0] != "llm":
            return None
        return self.llm_prefixes[found[1]] + key[len(found[1]) :]

    def prefixes(self, part: str) -> tuple[str, ...]:
        return {"llm": tuple(self.llm_prefixes), "encoder": self.encoder_prefixes}.get(part, self.connector_prefixes)

    def text_config_of(self, config: PreTrainedConfig) -> PreTrainedConfig:
        """The LLM config of a source config, as the config of a plain causal LM."""
        from transformers import AutoConfig  # imported when a config is built: reading the layouts does without it

        base = config if self.llm_config.flat else getattr(config, self.config.get("text_config", "text_config"))
        spec = self.llm_config
        if not spec.rebuilds:
            return base
        values = base.to_dict()
        for key in spec.inherit:
            if values.get(key) is None and getattr(config, key, None) is not None:
                values[key] = getattr(config, key)
        values = spec.kept(values)
        model_type = spec.type_for(getattr(config, "architectures", None), base.model_type)
        for key in ("model_type", "architectures", "transformers_version", "_name_or_path"):
            values.pop(key, None)
        try:
            return AutoConfig.for_model(model_type, **values)
        except (ValueError, KeyError, TypeError) as exc:
            raise VlmSwapError(f"cannot build the {model_type} LLM config of this {self.id} source: {exc}") from exc

    def flat_config(self, raw: dict) -> PreTrainedConfig | None:
        """A flat config.json of this layout (matched by architecture) as its LLM's config class, else None."""
        from transformers import AutoConfig  # imported when a config is built: reading the layouts does without it

        archs = raw.get("architectures") or []
        if not self.llm_config.flat or not set(archs) & set(self.architectures):
            return None
        model_type = self.llm_config.type_for(archs, "")
        if not model_type:
            raise VlmSwapError(
                f"{archs[0]}: no LLM model type declared for it in the {self.id} layout (adapters/{self.id}.yaml)"
            )
        values = {k: v for k, v in raw.items() if k not in ("model_type", "transformers_version", "_name_or_path")}
        if values.get("rope_scaling", 0) is None:  # null: no scaling (a deprecated key in transformers 5)
            del values["rope_scaling"]
        try:
            return AutoConfig.for_model(model_type, **values)
        except (ValueError, KeyError, TypeError) as exc:
            raise VlmSwapError(f"cannot read the flat {archs[0]} config as {model_type}: {exc}") from exc


SOURCES: Registry[SourceLayout] = Registry("source")


def _load_layouts() -> None:
    for path in sorted(data_dir("adapters").glob("*.yaml")):
        spec = SourceLayout.from_yaml(path)
        SOURCES.register(spec.id, spec)


_load_layouts()

#: A bare causal LM (the ``build`` command's input): every weight is the LLM's, keys unchanged.
CAUSAL_LM = SourceLayout("causal-lm", "a bare causal LM", (), (), {}, {"": ""})


def detect_layout(config: PreTrainedConfig) -> SourceLayout:
    """The layout a VLM config matches; a causal LM or an unknown VLM is refused, saying what to do."""
    for _, spec in SOURCES.items():
        if spec.matches(config):
            return spec
    archs = ", ".join(getattr(config, "architectures", None) or [config.model_type])
    if getattr(config, "architectures", None) and any(a.endswith("ForCausalLM") for a in config.architectures):
        raise VlmSwapError(f"{archs} is a causal LM, not a VLM; use `vlm-swap build --llm ...` to start from an LLM")
    raise VlmSwapError(f"not a supported VLM ({archs}); supported sources: {', '.join(SOURCES.ids())}")
