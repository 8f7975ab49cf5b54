"""Loading an upgraded model for use: ``vlm_swap.load(dir)`` -> (model, processor)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from .encoders.loading import load_pretrained, resolve_source
from .errors import VlmSwapError
from .modeling import SwapVLMForConditionalGeneration, SwapVLMProcessor


def load(
    path: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[SwapVLMForConditionalGeneration, SwapVLMProcessor]:
    """Load an upgraded model and its processor (safetensors only), in eval mode."""
    local = resolve_source(str(path))
    model = load_pretrained(AutoModelForImageTextToText, local, dtype=dtype, trust_remote_code=trust_remote_code)
    if not isinstance(model, SwapVLMForConditionalGeneration):
        raise VlmSwapError(f"{path} is a {type(model).__name__}, not a vlm-swap model; upgrade it first")
    processor = AutoProcessor.from_pretrained(local, trust_remote_code=trust_remote_code)
    if device:
        model = model.to(device)
    return model.eval(), processor
