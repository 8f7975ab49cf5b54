"""Reading a source checkpoint through its layout: config, weight shards, tokenizer, chat template.

``open_source`` resolves a source (local, hub or catalog id), reads its config (a flat original-LLaVA
config.json recognised from the raw file first), finds its layout (``layouts.detect_layout``; a bare
causal LM for ``build``) and lists its weight shards, refusing a checkpoint that lacks a part its
layout requires. Weights are never loaded: each shard opens lazily (``Source.open``: a reader per
file, safetensors or, with ``allow_pickle``, pickle read ``weights_only``), and ``Source.shard_tensors``
gives every tensor as a ``SourceTensor`` (its header checked), so the LLM can be streamed to the
output. ``read_parts`` adds what an upgrade keeps besides the LLM weights: the tokenizer and the chat
template (the processor's, else the tokenizer's, else the layout's default) and the generation config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoProcessor, AutoTokenizer, GenerationConfig, PreTrainedConfig

from ..checkpoints.resolve import resolve_source, weight_files
from ..checkpoints.safe import load_auto, load_config, open_weights
from ..checkpoints.tensors import SourceTensor, safetensors_tensors
from ..errors import VlmSwapError
from .layouts import CAUSAL_LM, SOURCES, SourceLayout, detect_layout


@dataclass
class Source:
    """A source checkpoint opened for reading: config, layout (its ``adapters/*.yaml`` spec) and
    lazily opened weight files."""

    path: Path
    layout: SourceLayout
    config: PreTrainedConfig
    weight_files: list[Path] = field(default_factory=list)
    allow_pickle: bool = False

    @property
    def text_config(self) -> PreTrainedConfig:
        if self.layout is CAUSAL_LM:
            return self.config
        return self.layout.text_config_of(self.config)

    @property
    def vision_config(self) -> PreTrainedConfig | None:
        return self.config_value("vision_config")

    @property
    def image_token_id(self) -> int | None:
        return self.config_value("image_token_id")

    def config_value(self, field: str):
        """The value of a layout config field (``connector_type``, ``vision_tower``, ...), or None."""
        key = self.layout.config.get(field)
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

    def shard_tensors(self) -> dict[Path, dict[str, SourceTensor]]:
        """The tensors of every weight file, by file: a safetensors shard read lazily through its header
        (read and checked here, once), or (only with ``allow_pickle``) a pickle file read ``weights_only``
        and streamed from memory the same way."""
        files = {}
        for path in self.weight_files:
            if path.suffix == ".safetensors":
                files[path] = safetensors_tensors(path)
            else:
                with self.open(path) as st:
                    files[path] = {key: SourceTensor.in_memory(st.get_tensor(key)) for key in st.keys()}
        return files

    def check_parts(self) -> None:
        """Refuse a checkpoint that lacks every weight of a part its layout requires."""
        present = {self.layout.part_of(k) for k in self.tensors()}
        for part in self.layout.required_parts:
            if part not in present:
                where = ", ".join(f"{p}*" for p in self.layout.prefixes(part))
                raise VlmSwapError(
                    f"{self.path}: no {part} weights ({where}): an incomplete {self.layout.id} checkpoint"
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
        layout = CAUSAL_LM
    else:
        layout = detect_layout(config)
    files = weight_files(path, required=weights, allow_pickle=allow_pickle) if weights else []
    src = Source(path, layout, config, files, allow_pickle)
    if files:
        src.check_parts()
    return src


def _what_to_do_with(config: PreTrainedConfig) -> str:
    """What a VLM given to ``build`` can be used for: a source of ``upgrade``, a perceiver, or neither."""
    from ..format.perceiver import PERCEIVER_FAMILIES

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


@dataclass(frozen=True)
class SourceParts:
    """What an upgrade keeps of a source besides its LLM weights, read from the checkpoint."""

    tokenizer: Any  # the source's tokenizer, as loaded (the token plan adds to it)
    chat_template: str | None
    generation_config: GenerationConfig  # its pad token is set once the tokens are planned


def read_parts(src: Source, *, trust_remote_code: bool) -> SourceParts:
    """The tokenizer, chat template and generation config of ``src``."""
    tokenizer = load_auto(AutoTokenizer, src.path, "tokenizer", trust_remote_code=trust_remote_code, config=src.config)
    return SourceParts(
        tokenizer=tokenizer,
        chat_template=_chat_template(src, tokenizer, trust_remote_code),
        generation_config=_generation_config(src),
    )


def _chat_template(src: Source, tokenizer, trust_remote_code: bool) -> str | None:
    """The source's processor template (multimodal-aware), else the tokenizer's, else its layout's default."""
    if src.layout.id != "causal-lm":
        try:
            processor = AutoProcessor.from_pretrained(
                str(src.path), config=src.config, trust_remote_code=trust_remote_code
            )
            if getattr(processor, "chat_template", None):
                return processor.chat_template
        except (OSError, ValueError, TypeError):
            pass
    return tokenizer.chat_template or src.layout.chat_template


def _generation_config(src: Source) -> GenerationConfig:
    try:
        return GenerationConfig.from_pretrained(str(src.path))
    except OSError:
        return GenerationConfig.from_model_config(src.text_config)
