"""Encoder kinds: the registry of their upgrade-time backends, and the ``KIND:SOURCE`` spec the CLI takes.

Each kind has two halves: its run-time module and preprocessing, part of the model format
(``vlm_swap/format``: ``hf_vit.py``, ``perceiver.py``, ...), and its backend here (``hf_vit.py``,
``perceiver.py``, ...), which reads a checkpoint of the kind into that module at upgrade time. A new kind is
a run-time file in ``format/``, a backend file here, and its entry in ``BUILT_IN_KINDS`` and
``format/kinds.py``; a plug-in registers its backend (whose ``runtime`` it brings) instead.

A backend module (with torch, transformers and the kind's own library) is imported on its first lookup; until
then its entry shows listings an ``EncoderKind`` with the backend class's own facts, so ``vlm-swap list
encoders`` imports none of them (``tests/test_registry.py`` checks the facts against the classes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import VlmSwapError
from ..registry import Lazy, Registry

if TYPE_CHECKING:
    from .base import EncoderBackend


@dataclass(frozen=True)
class EncoderKind:
    """What listings read of a backend class (``help``, ``input_names``, ``uses_boundaries``), without it."""

    help: str
    input_names: tuple[str, ...] = ("pixel_values",)
    uses_boundaries: bool = False


#: the built-in kinds: backend class (imported on first lookup) and what listings show until then
BUILT_IN_KINDS = {
    "perceiver": Lazy(
        "vlm_swap.backends.perceiver:PerceiverBackend",
        EncoderKind(
            "a small VLM (Qwen-VL, SmolVLM, LLaVA-OneVision, Gemma 3) whose last-layer image states are the features",
            ("pixel_values", "image_grid_thw", "pixel_attention_mask", "tile_grid", "image_sizes"),
            uses_boundaries=True,
        ),
    ),
    "hf-vit": Lazy(
        "vlm_swap.backends.hf_vit:HFViTBackend",
        EncoderKind(
            "CLIP / SigLIP / SigLIP2 vision tower from transformers (feature layer, CLS handled)",
            ("pixel_values", "pixel_attention_mask", "spatial_shapes"),
        ),
    ),
    "timm": Lazy(
        "vlm_swap.backends.timm_vit:TimmBackend",
        EncoderKind("any timm ViT via transformers' TimmWrapperModel (feature layer, CLS/register tokens dropped)"),
    ),
    "open-clip": Lazy(
        "vlm_swap.backends.open_clip_vit:OpenCLIPBackend",
        EncoderKind("OpenCLIP visual tower from an open_clip hub dir (feature layer, CLS dropped)"),
    ),
}
ENCODERS: Registry[type[EncoderBackend]] = Registry("encoder kind")
for _kind, _entry in BUILT_IN_KINDS.items():
    ENCODERS.register(_kind, _entry)


@dataclass(frozen=True)
class EncoderSpec:
    """``KIND:SOURCE``: a registered encoder kind and a catalog id, local dir or hub id."""

    kind: str
    source: str

    @classmethod
    def parse(cls, text: str) -> EncoderSpec:
        kind, sep, source = text.partition(":")
        if not sep or not kind or not source:
            raise VlmSwapError(f"encoder spec {text!r} must be KIND:SOURCE, e.g. perceiver:qwen3-vl-2b")
        ENCODERS.get(kind)  # unknown kind -> error with the closest kinds
        return cls(kind, source)

    def __str__(self) -> str:
        return f"{self.kind}:{self.source}"


__all__ = ["BUILT_IN_KINDS", "ENCODERS", "EncoderKind", "EncoderSpec"]
