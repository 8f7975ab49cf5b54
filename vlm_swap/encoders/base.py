"""The encoder-backend interface every kind implements.

A backend is an ``nn.Module`` that turns preprocessed images into feature rows for the
connector. Because images of different sizes give different token counts, ``forward`` returns
the rows of all images concatenated in order: ``[R, D]`` with ``R = sum(rows_per_image)``; the
model scatters them into the placeholder positions of the LLM prompt in the same order.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedConfig


class EncoderBackend(nn.Module):
    """Base class: subclasses set ``kind`` and ``help`` and implement the methods below."""

    kind: ClassVar[str]
    help: ClassVar[str]
    #: names of the processor outputs ``forward`` consumes (besides nothing else)
    input_names: ClassVar[tuple[str, ...]] = ("pixel_values",)
    #: True when the rows include a vision-start and a vision-end row around the N image rows
    uses_boundaries: ClassVar[bool] = False
    #: the file that marks a local directory as a checkpoint this kind loads
    marker_file: ClassVar[str] = "config.json"

    def __init__(self, config: PreTrainedConfig | None, args: dict[str, Any]):
        super().__init__()
        self.args = dict(args)

    @property
    def feature_dim(self) -> int:
        raise NotImplementedError

    def forward(self, **image_inputs: torch.Tensor) -> torch.Tensor:  # -> [R, D]
        raise NotImplementedError

    @classmethod
    def load(
        cls, source: str, *, dtype: torch.dtype | None, trust_remote_code: bool, allow_pickle: bool = False
    ) -> LoadedEncoder:
        """Load the encoder from a local dir with its image processor; pickle weights only with ``allow_pickle``
        (read with ``weights_only=True``)."""
        raise NotImplementedError

    @classmethod
    def has_boundaries(cls, source: str, *, trust_remote_code: bool) -> bool:
        """Whether the encoder at ``source`` gives boundary rows, known without loading its weights."""
        return cls.uses_boundaries

    @staticmethod
    def preprocess(image_processor, images: list, args: dict[str, Any], **kwargs) -> dict[str, Any]:
        """The image inputs ``forward`` takes, dim 0 concatenating across images (so batches collate)."""
        return dict(image_processor(images, **kwargs))

    @staticmethod
    def image_rows(image_inputs: dict[str, Any], index: int, args: dict[str, Any]) -> int:
        """Number of image rows (without boundaries) for image ``index`` of a processor output."""
        raise NotImplementedError


class LoadedEncoder:
    """An encoder as loaded from its source: module, image processor and the facts to save."""

    def __init__(self, module: EncoderBackend, config: PreTrainedConfig | None, image_processor: Any, info: dict):
        self.module = module
        self.config = config
        self.image_processor = image_processor
        self.info = info  # e.g. {"model_type": ..., "source": ...}


def strided_rows(image_inputs: dict[str, Any], index: int, args: dict[str, Any]) -> int:
    """Rows of a fixed-stride ViT without prefix tokens: (H / stride_h) * (W / stride_w)."""
    h, w = image_inputs["pixel_values"].shape[-2:]
    sh, sw = args["stride"]
    return (h // sh) * (w // sw)
