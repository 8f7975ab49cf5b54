"""``vlm-swap inspect``: what a checkpoint is made of, from its config alone.

The model is built on the meta device (no memory, no weights read), so a directory holding only
a config.json gives the same architecture, part sizes and parameter counts as a full checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

from .catalog import CATALOG
from .encoders.loading import looks_local
from .errors import VlmSwapError
from .io import PROVENANCE_NAME, read_json
from .sources import CAUSAL_LM, Source, describe, detect_adapter, open_source


def _meta_model(config, causal: bool = False, trust_remote_code: bool = False):
    cls = AutoModelForCausalLM if causal else AutoModelForImageTextToText
    try:
        with torch.device("meta"):
            return cls.from_config(config, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError) as exc:
        raise VlmSwapError(f"cannot build {describe(config)} from its config: {exc}") from exc


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied parameters are counted once


def inspect_source(source: str, *, trust_remote_code: bool = False) -> dict[str, Any]:
    """A JSON-able report of a source VLM, an upgraded vlm-swap model, or a catalog VLM/LLM (offline)."""
    if source in CATALOG and not looks_local(source):
        entry = CATALOG.get(source)
        config = entry.config()
        adapter = CAUSAL_LM if entry.role == "llm" else detect_adapter(config)
        src = Source(Path(entry.hub_id), adapter, config)
    else:
        src = open_source(source, weights=False, trust_remote_code=trust_remote_code)
    model = _meta_model(src.config, causal=src.adapter is CAUSAL_LM, trust_remote_code=trust_remote_code)
    parts: dict[str, int] = {"encoder": 0, "connector": 0, "llm": 0}
    for name, p in model.named_parameters():
        part = src.adapter.part_of(name)
        if part:
            parts[part] += p.numel()
    text, vision = src.text_config, src.vision_config
    image_token_id = src.image_token_id
    report: dict[str, Any] = {
        "path": str(src.path),
        "architecture": describe(src.config),
        "source_kind": src.adapter.id,
        "weights": "safetensors" if src.path.is_dir() and any(src.path.glob("*.safetensors")) else "config only",
        "parts": {
            "encoder": {
                "type": getattr(vision, "model_type", None),
                "params": parts["encoder"],
                "hidden_size": getattr(vision, "hidden_size", None),
            },
            "connector": {"type": _config_value(src, "connector_type"), "params": parts["connector"]},
            "llm": {
                "type": text.model_type,
                "params": parts["llm"],
                "hidden_size": text.hidden_size,
                "layers": text.num_hidden_layers,
                "vocab_size": text.vocab_size,
                "context": getattr(text, "max_position_embeddings", None),
            },
        },
        "image_token_id": image_token_id,
        "image_token": _token_string(src.path, image_token_id, trust_remote_code),
        "tokens_per_image": _tokens_per_image(src),
        "total_params": count_params(model),
    }
    provenance = src.path / PROVENANCE_NAME
    if provenance.is_file():
        report["provenance"] = read_json(provenance)
    return report


def _config_value(src, field: str):
    key = src.adapter.config.get(field)
    return getattr(src.config, key, None) if key else None


def _tokens_per_image(src) -> int | None:
    cfg, vision = src.config, src.vision_config
    if src.adapter.id == "swap-vlm":
        return None
    if getattr(cfg, "image_seq_length", None):
        return int(cfg.image_seq_length)
    if vision is not None and getattr(vision, "image_size", None) and getattr(vision, "patch_size", None):
        return (vision.image_size // vision.patch_size) ** 2
    return None


def _token_string(path, token_id: int | None, trust_remote_code: bool = False) -> str | None:
    if token_id is None or not (path / "tokenizer_config.json").is_file():
        return None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        return tokenizer.convert_ids_to_tokens(int(token_id))
    except (OSError, ValueError):
        return None
