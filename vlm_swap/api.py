"""Loading an upgraded model for use: ``vlm_swap.load(dir)`` -> (model, processor)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from .checkpoints.atomic import read_json
from .checkpoints.resolve import checked_weight_files, resolve_source
from .checkpoints.safe import load_pretrained
from .errors import VlmSwapError
from .format.modeling_swap_vlm import SwapVLMForConditionalGeneration
from .format.processing_swap_vlm import SwapVLMProcessor

ADAPTER_CONFIG = "adapter_config.json"  # peft's: a training run that holds a LoRA adapter


def adapter_base(run: Path) -> str:
    """The base model of the LoRA adapter in ``run``: where its adapter config says it was trained from."""
    base = read_json(run / ADAPTER_CONFIG).get("base_model_name_or_path")
    if not base:
        raise VlmSwapError(f"{run / ADAPTER_CONFIG} does not name its base model")
    return base


def load(
    path: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> tuple[SwapVLMForConditionalGeneration, SwapVLMProcessor]:
    """Load an upgraded model and its processor, in eval mode: safetensors, or with ``allow_pickle``
    pickle weights read ``weights_only``.

    ``path`` may also be a training run holding a LoRA adapter: its base model is loaded and the
    adapter (with the trained connector) applied through peft.
    """
    if (Path(path) / ADAPTER_CONFIG).is_file():
        from peft import PeftModel

        base = adapter_base(Path(path))
        checked_weight_files(Path(path), allow_pickle=allow_pickle)  # pickle-only: refused; truncated: one line
        model, processor = load(
            base, dtype=dtype, device=device, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle
        )
        return PeftModel.from_pretrained(model, str(path)).eval(), processor
    local = resolve_source(str(path), allow_pickle=allow_pickle)
    model = load_pretrained(
        AutoModelForImageTextToText, local, dtype=dtype, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle
    )
    if not isinstance(model, SwapVLMForConditionalGeneration):
        raise VlmSwapError(f"{path} is a {type(model).__name__}, not a vlm-swap model; upgrade it first")
    processor = AutoProcessor.from_pretrained(local, trust_remote_code=trust_remote_code)
    if device:
        model = model.to(device)
    return model.eval(), processor


def load_any(
    path: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
):
    """A vlm-swap model (or run), or any transformers image-text model such as a llava-hf source."""
    local = Path(path)
    opts = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
    if (local / ADAPTER_CONFIG).is_file():
        return load(path, dtype=dtype, **opts)
    resolved = resolve_source(str(path), allow_pickle=allow_pickle)
    if read_json(Path(resolved) / "config.json").get("model_type") == "swap_vlm":
        return load(resolved, dtype=dtype, **opts)
    model = load_pretrained(AutoModelForImageTextToText, resolved, dtype=dtype, **opts)
    return model.eval(), AutoProcessor.from_pretrained(resolved, trust_remote_code=trust_remote_code)
