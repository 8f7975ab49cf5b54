"""Encoder backends by kind, and the ``KIND:SOURCE`` spec the CLI takes."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import VlmSwapError
from ..registry import Registry
from .base import EncoderBackend, LoadedEncoder
from .hf_vit import HFViTEncoder
from .open_clip_vit import OpenCLIPEncoder
from .perceiver import PerceiverEncoder
from .timm_vit import TimmViTEncoder

ENCODERS: Registry[type[EncoderBackend]] = Registry("encoder kind")
for _cls in (PerceiverEncoder, HFViTEncoder, TimmViTEncoder, OpenCLIPEncoder):
    ENCODERS.register(_cls.kind, _cls)


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


__all__ = [
    "ENCODERS",
    "EncoderBackend",
    "EncoderSpec",
    "LoadedEncoder",
    "HFViTEncoder",
    "OpenCLIPEncoder",
    "PerceiverEncoder",
    "TimmViTEncoder",
]
