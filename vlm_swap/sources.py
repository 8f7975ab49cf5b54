"""Source checkpoints: adapter specs (``adapters/*.yaml``) and reading a source into its parts.

An adapter spec says, for one family of existing VLMs, which config keys hold the LLM config,
the vision config and the image token, how the LLM config becomes the config of a plain causal LM
(``llm_config``: rebuilt as another model type, keys inherited from the top level or dropped, or
read from a flat config.json that transformers' AutoConfig would misread), and which weight-key
prefixes belong to the LLM (with their renaming into a plain causal LM), the encoder and the
connector; the longest matching prefix decides. Reading a source never loads weights: it opens the
weight shards lazily (``Source.open``: a reader per file, safetensors or,
with ``allow_pickle``, pickle read ``weights_only``) so the LLM can be streamed to the output.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import AutoConfig, PreTrainedConfig

from .checkpoints.resolve import resolve_source, weight_files
from .checkpoints.safe import load_config, open_safetensors, open_weights
from .errors import VlmSwapError
from .registry import Registry


def data_dir(name: str) -> Path:
    """``adapters`` / ``recipes``: beside the package in a checkout, inside it in a wheel."""
    here = Path(__file__).resolve().parent
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
class AdapterSpec:
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
    def from_yaml(cls, path: Path) -> AdapterSpec:
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
        archs = raw.get("architectures") or []
        if not self.llm_config.flat or not set(archs) & set(self.architectures):
            return None
        model_type = self.llm_config.type_for(archs, "")
        if not model_type:
            raise VlmSwapError(f"{archs[0]}: no LLM model type declared for it in the {self.id} adapter")
        values = {k: v for k, v in raw.items() if k not in ("model_type", "transformers_version", "_name_or_path")}
        if values.get("rope_scaling", 0) is None:  # null: no scaling (a deprecated key in transformers 5)
            del values["rope_scaling"]
        try:
            return AutoConfig.for_model(model_type, **values)
        except (ValueError, KeyError, TypeError) as exc:
            raise VlmSwapError(f"cannot read the flat {archs[0]} config as {model_type}: {exc}") from exc


SOURCES: Registry[AdapterSpec] = Registry("source")


def _load_adapters() -> None:
    for path in sorted(data_dir("adapters").glob("*.yaml")):
        spec = AdapterSpec.from_yaml(path)
        SOURCES.register(spec.id, spec)


_load_adapters()

#: A bare causal LM (the ``build`` command's input): every weight is the LLM's, keys unchanged.
CAUSAL_LM = AdapterSpec("causal-lm", "a bare causal LM", (), (), {}, {"": ""})


@dataclass
class Source:
    """A source checkpoint opened for reading: config, adapter and lazily opened weight files."""

    path: Path
    adapter: AdapterSpec
    config: PreTrainedConfig
    weight_files: list[Path] = field(default_factory=list)
    allow_pickle: bool = False

    @property
    def text_config(self) -> PreTrainedConfig:
        if self.adapter is CAUSAL_LM:
            return self.config
        return self.adapter.text_config_of(self.config)

    @property
    def vision_config(self) -> PreTrainedConfig | None:
        key = self.adapter.config.get("vision_config")
        return getattr(self.config, key, None) if key else None

    @property
    def image_token_id(self) -> int | None:
        key = self.adapter.config.get("image_token_id")
        return getattr(self.config, key, None) if key else None

    def config_value(self, field: str):
        """The value of an adapter config field (``connector_type``, ``vision_tower``, ...), or None."""
        key = self.adapter.config.get(field)
        return getattr(self.config, key, None) if key else None

    def open(self, path: Path):
        """A reader (``keys()`` / ``get_tensor(key)``, a context manager) for one of ``weight_files``."""
        return open_weights(path, allow_pickle=self.allow_pickle)

    def tensors(self) -> dict[str, Path]:
        """Every weight key of the source and the shard that holds it."""
        out: dict[str, Path] = {}
        for f in self.weight_files:
            with self.open(f) as st:
                out.update(dict.fromkeys(st.keys(), f))
        return out

    def check_parts(self) -> None:
        """Refuse a checkpoint that lacks every weight of a part its layout requires."""
        present = {self.adapter.part_of(k) for k in self.tensors()}
        for part in self.adapter.required_parts:
            if part not in present:
                where = ", ".join(f"{p}*" for p in self.adapter.prefixes(part))
                raise VlmSwapError(
                    f"{self.path}: no {part} weights ({where}): an incomplete {self.adapter.id} checkpoint"
                )


def load_source_config(path: str | Path, trust_remote_code: bool = False) -> PreTrainedConfig:
    """The config of a checkpoint dir; a flat layout (original LLaVA) is recognised from the raw file first."""
    raw_path = Path(path) / "config.json"
    try:
        raw = json.loads(raw_path.read_text()) if raw_path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise VlmSwapError(f"cannot read {raw_path}: {exc}") from exc
    for _, spec in SOURCES.items():
        if (flat := spec.flat_config(raw if isinstance(raw, dict) else {})) is not None:
            return flat
    return load_config(path, trust_remote_code)


def detect_adapter(config: PreTrainedConfig) -> AdapterSpec:
    for _, spec in SOURCES.items():
        if spec.matches(config):
            return spec
    archs = ", ".join(getattr(config, "architectures", None) or [config.model_type])
    if getattr(config, "architectures", None) and any(a.endswith("ForCausalLM") for a in config.architectures):
        raise VlmSwapError(f"{archs} is a causal LM, not a VLM; use `vlm-swap build --llm ...` to start from an LLM")
    raise VlmSwapError(f"not a supported VLM ({archs}); supported sources: {', '.join(SOURCES.ids())}")


def open_source(
    source: str,
    *,
    weights: bool = True,
    bare_llm: bool = False,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    revision: str | None = None,
) -> Source:
    """Resolve and open a source: a VLM (default) or a bare causal LM (``bare_llm``)."""
    path = Path(resolve_source(source, config_only=not weights, revision=revision, allow_pickle=allow_pickle))
    config = load_source_config(path, trust_remote_code)
    if bare_llm:
        vlm = getattr(config, "text_config", None) is not None or getattr(config, "vision_config", None) is not None
        if vlm or any(spec.llm_config.flat and spec.matches(config) for _, spec in SOURCES.items()):
            raise VlmSwapError(f"{source} is a VLM ({describe(config)}), not a bare LLM; {_what_to_do_with(config)}")
        adapter = CAUSAL_LM
    else:
        adapter = detect_adapter(config)
    files = weight_files(path, required=weights, allow_pickle=allow_pickle) if weights else []
    src = Source(path, adapter, config, files, allow_pickle)
    if files:
        src.check_parts()
    return src


def _what_to_do_with(config: PreTrainedConfig) -> str:
    """What a VLM given to ``build`` can be used for: a source of ``upgrade``, a perceiver, or neither."""
    from .encoders.perceiver import PERCEIVER_FAMILIES

    if any(spec.matches(config) for _, spec in SOURCES.items()):
        return "use `vlm-swap upgrade` for VLMs"
    if config.model_type in PERCEIVER_FAMILIES:
        return (
            "upgrade does not take this layout as a source, but it can be the encoder: "
            "`vlm-swap build --llm LLM --encoder perceiver:PATH` or `vlm-swap upgrade SRC --encoder perceiver:PATH`"
        )
    return f"neither build nor upgrade takes it (upgrade's sources: {', '.join(SOURCES.ids())})"


def describe(config: Any) -> str:
    archs = getattr(config, "architectures", None) or [config.model_type]
    return archs[0]


__all__ = ["AdapterSpec", "SOURCES", "Source", "load_config", "open_safetensors", "open_source"]
