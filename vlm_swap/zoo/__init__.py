"""The embedded default: tiny real models and a synthetic image-text world, built offline.

``build_default(root)`` writes the demo's two checkpoints: an "existing" llava-hf VLM
(Llama-2-style LLM + CLIP tower) and a Qwen3-VL small VLM to use as the perceiver.
"""

from __future__ import annotations

from pathlib import Path

from .models import build_llava, build_llm, build_perceiver, build_vit
from .world import make_scene


def build_default(root: Path) -> dict[str, Path]:
    root = Path(root)
    return {
        "source": build_llava(root / "tiny-llava", llm="llama2", vision="clip"),
        "perceiver": build_perceiver(root / "tiny-qwen3-vl", family="qwen3_vl"),
    }


__all__ = ["build_default", "build_llava", "build_llm", "build_perceiver", "build_vit", "make_scene"]
