"""Source checkpoints: adapter specs (``adapters/*.yaml``) and reading a source into its parts.

An adapter spec says, for one family of existing VLMs, which config keys hold the LLM config,
the vision config and the image token, and which weight-key prefixes belong to the LLM (with
their renaming into a plain causal LM), the encoder and the connector. Reading a source never
loads weights: it opens the weight shards lazily (``Source.open`` / ``Source.iter_tensors``: a reader
per file, safetensors or, with ``allow_pickle``, pickle read ``weights_only``) so the LLM can be
streamed to the output.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import PreTrainedConfig

from .encoders.loading import load_config, open_safetensors, open_weights, resolve_source, weight_files
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

    @classmethod
    def from_yaml(cls, path: Path) -> AdapterSpec:
        raw = yaml.safe_load(path.read_text())
        known = {"id", "help", "architectures", "model_types", "config", "weights"}
        if unknown := set(raw) - known:
            raise VlmSwapError(f"{path}: unknown keys {sorted(unknown)}")
        w = raw.get("weights", {})
        return cls(
            id=raw["id"],
            help=raw.get("help", ""),
            architectures=tuple(raw.get("architectures", ())),
            model_types=tuple(raw.get("model_types", ())),
            config=dict(raw.get("config", {})),
            llm_prefixes=dict(w.get("llm", {})),
            encoder_prefixes=tuple(w.get("encoder", ())),
            connector_prefixes=tuple(w.get("connector", ())),
        )

    def matches(self, config: PreTrainedConfig) -> bool:
        archs = set(getattr(config, "architectures", None) or ())
        return bool(archs & set(self.architectures)) or config.model_type in self.model_types

    def part_of(self, key: str) -> str | None:
        """Which part ('llm', 'encoder', 'connector') a source weight key belongs to."""
        if any(key.startswith(p) for p in self.llm_prefixes):
            return "llm"
        if any(key.startswith(p) for p in self.encoder_prefixes):
            return "encoder"
        if any(key.startswith(p) for p in self.connector_prefixes):
            return "connector"
        return None

    def llm_key(self, key: str) -> str | None:
        """The key inside the causal LM for an LLM weight of the source, or None."""
        for src, dst in self.llm_prefixes.items():
            if key.startswith(src):
                return dst + key[len(src) :]
        return None


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
        return getattr(self.config, self.adapter.config.get("text_config", "text_config"))

    @property
    def vision_config(self) -> PreTrainedConfig | None:
        key = self.adapter.config.get("vision_config")
        return getattr(self.config, key, None) if key else None

    @property
    def image_token_id(self) -> int | None:
        key = self.adapter.config.get("image_token_id")
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

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every weight key of the source and its shape, from the file headers (no tensor data read)."""
        out: dict[str, tuple[int, ...]] = {}
        for f in self.weight_files:
            with self.open(f) as st:
                for key in st.keys():
                    part = st.get_slice(key)  # a safetensors slice, or the tensor itself for pickle files
                    out[key] = tuple(part.get_shape() if hasattr(part, "get_shape") else part.shape)
        return out

    def iter_tensors(self) -> Iterator[tuple[Path, str, torch.Tensor]]:
        """(shard, key, tensor) for every weight of the source, one shard open at a time."""
        for f in self.weight_files:
            with self.open(f) as st:
                for key in st.keys():
                    yield f, key, st.get_tensor(key)


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
    config = load_config(path, trust_remote_code)
    if bare_llm:
        if getattr(config, "text_config", None) is not None or getattr(config, "vision_config", None) is not None:
            raise VlmSwapError(f"{source} is a VLM ({config.model_type}); use `vlm-swap upgrade` for VLMs")
        adapter = CAUSAL_LM
    else:
        adapter = detect_adapter(config)
    files = weight_files(path, required=weights, allow_pickle=allow_pickle) if weights else []
    return Source(path, adapter, config, files, allow_pickle)


def describe(config: Any) -> str:
    archs = getattr(config, "architectures", None) or [config.model_type]
    return archs[0]


__all__ = ["AdapterSpec", "SOURCES", "Source", "load_config", "open_safetensors", "open_source"]
