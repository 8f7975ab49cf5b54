"""The embedded default: tiny real models and a synthetic image-text world, built offline.

``build_default(root)`` writes the demo's two checkpoints: an "existing" llava-hf VLM
(Llama-2-style LLM + CLIP tower) that answers the synthetic world's questions, and a Qwen3-VL
small VLM that describes its images, to use as the perceiver. Both were pretrained on the world
by ``python -m vlm_swap.zoo.pretrain`` and are shipped in ``vlm_swap/zoo/pretrained/``.
``build_comparison(root, scenes)`` writes the inputs of ``vlm-swap compare --embedded``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import VlmSwapError
from .models import build_llava, build_llm, build_vit, save_vision_tower
from .perceivers import build_perceiver
from .world import make_scene, write_dataset

PRETRAINED = Path(__file__).resolve().parent / "pretrained"


def build_default(root: Path) -> dict[str, Path]:
    """Copy the shipped pretrained tiny models to ``root`` (a fresh copy each time)."""
    root = Path(root)
    out = {}
    for key, name in (("source", "tiny-llava"), ("perceiver", "tiny-qwen3-vl")):
        src = PRETRAINED / name
        if not (src / "model.safetensors").is_file():
            raise VlmSwapError(
                f"the embedded model {name} is missing from {PRETRAINED}; "
                "regenerate it with `python -m vlm_swap.zoo.pretrain`"
            )
        shutil.rmtree(root / name, ignore_errors=True)
        out[key] = Path(shutil.copytree(src, root / name))
    return out


def build_comparison(root: Path, scenes: dict[str, int]) -> None:
    """The embedded A/B inputs: ``models/`` (the two shipped models and the source's CLIP tower on its
    own, for the ViT arm) and ``data/`` (``train``: the demo's rows, ``eval``: held-out scenes,
    ``text``: held-out text-only rows), with ``scenes`` rows each."""
    root = Path(root)
    models = build_default(root / "models")
    save_vision_tower(models["source"], root / "models" / "tiny-clip")
    write_dataset(root / "data" / "train", scenes["train"], seed=1)  # the demo's training rows
    write_dataset(root / "data" / "eval", scenes["eval"], seed=2)  # the demo's held-out scenes
    write_dataset(root / "data" / "text", scenes["text"], seed=3, words=True)


__all__ = [
    "build_comparison",
    "build_default",
    "build_llava",
    "build_llm",
    "build_perceiver",
    "build_vit",
    "make_scene",
    "save_vision_tower",
    "write_dataset",
]
