"""``inspect`` by building the model on the meta device: a checkpoint, or a catalog architecture.

The model is built on the meta device (no memory, no weights read), so a directory holding only
a config.json gives the same architecture, part sizes and parameter counts as a full checkpoint.
A layout whose config describes only the LLM (original LLaVA: the tower is referenced by name)
has its other parts counted from the safetensors headers when the weights are there.

The catalog's stored reports are these builds: ``python -m vlm_swap.inspection.meta`` rewrites
``vlm_swap/catalog/reports.json`` after a catalog family file changed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

from ..catalog import BUILT_IN, CATALOG, REPORTS
from ..checkpoints.atomic import read_json, write_text
from ..checkpoints.guards import PROVENANCE_NAME
from ..checkpoints.resolve import looks_local, weight_files
from ..checkpoints.tensors import read_safetensors_header
from ..errors import VlmSwapError
from ..surgery.layouts import CAUSAL_LM, detect_layout
from ..surgery.source import Source, describe, open_source


def _meta_model(config, causal: bool = False, trust_remote_code: bool = False):
    cls = AutoModelForCausalLM if causal else AutoModelForImageTextToText
    try:
        with torch.device("meta"):
            return cls.from_config(config, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError) as exc:
        raise VlmSwapError(f"cannot build {describe(config)} from its config: {exc}") from exc


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied parameters are counted once


def inspect_built(source: str, *, trust_remote_code: bool = False) -> dict[str, Any]:
    """A JSON-able report of a source VLM, an upgraded vlm-swap model, or a catalog model (offline)."""
    if source in CATALOG and not looks_local(source):
        entry = CATALOG.get(source)
        if entry.role in ("perceiver", "vit"):
            return inspect_encoder_entry(entry)
        config = entry.config()
        adapter = CAUSAL_LM if entry.role == "llm" else detect_layout(config)
        src = Source(Path(entry.hub_id), adapter, config)
    else:
        src = open_source(source, weights=False, trust_remote_code=trust_remote_code)
    causal = src.layout is CAUSAL_LM or src.layout.llm_config.flat
    model = _meta_model(src.text_config if causal else src.config, causal=causal, trust_remote_code=trust_remote_code)
    parts: dict[str, int] = {"encoder": 0, "connector": 0, "llm": 0}
    for name, p in model.named_parameters():
        part = src.layout.part_of(name)
        if part:
            parts[part] += p.numel()
    extra = 0
    if 0 in parts.values():  # a part the config does not describe (original LLaVA's projector and tower)
        for part, n in _header_counts(src).items():
            if parts[part] == 0:
                parts[part], extra = n, extra + n
    text, vision = src.text_config, src.vision_config
    image_token_id = src.image_token_id
    report: dict[str, Any] = {
        "path": str(src.path),
        "architecture": describe(src.config),
        "source_kind": src.layout.id,
        "weights": "safetensors" if src.path.is_dir() and any(src.path.glob("*.safetensors")) else "config only",
        "parts": {
            "encoder": {
                "type": getattr(vision, "model_type", None)
                or src.config_value("vision_tower")
                or src.config_value("encoder_kind"),
                "params": parts["encoder"],
                "hidden_size": getattr(vision, "hidden_size", None),
            },
            "connector": {"type": src.config_value("connector_type"), "params": parts["connector"]},
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
        "total_params": count_params(model) + extra,
    }
    provenance = src.path / PROVENANCE_NAME
    if provenance.is_file():
        report["provenance"] = read_json(provenance)
    return report


def _header_counts(src: Source) -> dict[str, int]:
    """Parameters per part read from the safetensors headers of a local checkpoint (no tensor read)."""
    counts = {"encoder": 0, "connector": 0, "llm": 0}
    if not src.path.is_dir():
        return counts
    for path in weight_files(src.path, required=False):
        for key, info in read_safetensors_header(path).items():
            if part := src.layout.part_of(key):
                counts[part] += math.prod(info.shape)
    return counts


def _tokens_per_image(src) -> int | None:
    cfg, vision = src.config, src.vision_config
    if src.layout.id == "swap-vlm":
        return _swap_vlm_rows(src)
    if getattr(cfg, "image_seq_length", None):
        return int(cfg.image_seq_length)
    if vision is not None and getattr(vision, "image_size", None) and getattr(vision, "patch_size", None):
        return (vision.image_size // vision.patch_size) ** 2
    return None


def _swap_vlm_rows(src) -> int | None:
    """Rows a 512 x 512 image gives an upgraded model (boundaries included), from its own processor."""
    if not (src.path / "processor_config.json").is_file():
        return None  # a config-only snapshot
    from ..format.processing_swap_vlm import SwapVLMProcessor

    try:
        processor = SwapVLMProcessor.from_pretrained(str(src.path))
    except (OSError, ValueError):
        return None
    rows = processor.processing.rows_per_image
    return rows(processor.image_processor, processor.encoder_args, bool(processor.image_start))


def _token_string(path, token_id: int | None, trust_remote_code: bool = False) -> str | None:
    if token_id is None or not (path / "tokenizer_config.json").is_file():
        return None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None
    known = type(token_id) is int and 0 <= token_id < len(tokenizer)  # a config may name an id it lacks
    return tokenizer.convert_ids_to_tokens(token_id) if known else None


def inspect_encoder_entry(entry) -> dict[str, Any]:
    """A catalog perceiver or ViT built on the meta device: its parts, rows per image and parameter counts.

    A perceiver is counted whole (as published) and as the encoder keeps it (the base model, no LM head).
    """
    from transformers import AutoModel

    config = entry.config()
    cls = AutoModel if entry.role == "vit" else AutoModelForImageTextToText
    try:
        with torch.device("meta"):
            model = cls.from_config(config)
    except (ValueError, KeyError) as exc:
        raise VlmSwapError(f"cannot build {entry.id} from its catalog architecture: {exc}") from exc
    parts = {"vision": 0, "llm": 0, "lm_head": 0}
    for name, p in model.named_parameters():
        part = "lm_head" if name.startswith("lm_head") else "llm" if _is_text(name) else "vision"
        parts[part] += p.numel()
    text = config.get_text_config() if entry.role == "perceiver" else None
    vision = getattr(config, "vision_config", config)
    report_parts = {"vision": {"type": vision.model_type, "params": parts["vision"], "hidden_size": vision.hidden_size}}
    if text is not None:
        report_parts["llm"] = {"type": text.model_type, "params": parts["llm"], "hidden_size": text.hidden_size}
        report_parts["lm_head"] = {"type": "unused by the perceiver", "params": parts["lm_head"]}
    boundary = 2 if entry.role == "perceiver" and entry.boundaries else 0
    return {
        "path": entry.hub_id,
        "architecture": describe(config),
        "source_kind": f"catalog {entry.role} ({entry.encoder_kind})",
        "weights": "config only",
        "parts": report_parts,
        "image_token_id": None,
        "image_token": None,
        "tokens_per_image": entry.tokens_per_image + boundary,
        "feature_dim": entry.hidden_size,
        "encoder_params": count_params(model) - parts["lm_head"],
        "total_params": count_params(model),
    }


def _is_text(name: str) -> bool:
    return "language_model" in name or "text_model" in name


def catalog_reports() -> dict[str, dict[str, Any]]:
    """The report of every built-in catalog entry with an architecture, as ``reports.json`` holds them."""
    return {id: inspect_built(id) for id in sorted(BUILT_IN) if CATALOG.get(id).arch is not None}


if __name__ == "__main__":
    write_text(REPORTS, json.dumps(catalog_reports(), indent=2) + "\n")
    print(f"wrote {REPORTS}")
