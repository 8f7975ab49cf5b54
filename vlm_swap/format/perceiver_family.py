"""The per-family interface of perceivers: how one small-VLM family lays out an image in its prompt.

A family turns the processor outputs of its own image processor into a flat, per-image layout
(``preprocess``: tensors whose dim 0 concatenates across images, so batches collate), says which
token ids make up the image *span* of image ``i`` (``span_ids``: the rows the perceiver returns),
and which extra inputs its base model's forward needs besides ``input_ids`` and the attention
mask (``model_inputs``), so that the model's own embedding merge runs on them. What the upgrade reads once
from the perceiver's config and processor (``span_start_id``, ``cap``, ``args``) is part of the same class:
a family is one description of one prompt layout.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers import PreTrainedConfig

from .encoder import ImageProcessing
from .errors import VlmSwapError

#: DPA trained with at most 262,144 pixels per image; the perceiver's processor is capped to it where the family allows.
DEFAULT_MAX_PIXELS = 262_144


class PerceiverFamily(ImageProcessing):
    """One family: subclasses set the class attributes and implement the methods. Its preprocessing and row counts
    are those of ``ImageProcessing`` (``rows_for_size`` processes a blank image unless the family's processor has
    a counting rule; ``size_independent`` is False unless every image gives the same rows)."""

    model_types: ClassVar[tuple[str, ...]]
    name: ClassVar[str]
    text_family: ClassVar[str]  # LLM family of the perceiver's LM (for the "same family" pair check)
    #: True when the span starts and ends with a marker token around the N image rows (``N + 2`` rows)
    boundaries: ClassVar[bool] = True
    #: what ``preprocess`` returns and ``forward`` consumes
    input_names: ClassVar[tuple[str, ...]] = ("pixel_values",)
    #: name of the base model's token-type input that flags image positions (None: not taken)
    token_types_name: ClassVar[str | None] = None

    @classmethod
    def span_start_id(cls, config: PreTrainedConfig, processor) -> int:
        """The token id that opens an image span; the perceiver prompt is cut right before it."""
        raise NotImplementedError

    @classmethod
    def cap(cls, config: PreTrainedConfig, image_processor) -> None:
        """Cap the image resolution in place (config and processor agree afterwards)."""

    @classmethod
    def args(cls, config: PreTrainedConfig, processor) -> dict[str, Any]:
        """Family token ids and sizes, read from the perceiver's config and processor."""
        raise NotImplementedError

    @classmethod
    def preprocess(cls, image_processor, images: list, args: dict[str, Any], **kwargs) -> dict[str, torch.Tensor]:
        return dict(image_processor(images, **{**kwargs, "return_tensors": "pt"}))

    @classmethod
    def span_ids(cls, inputs: dict[str, Any], index: int, args: dict[str, Any]) -> list[int]:
        """Token ids of image ``index``'s span, markers included."""
        raise NotImplementedError

    @classmethod
    def image_rows(cls, inputs: dict[str, Any], index: int, args: dict[str, Any]) -> int:
        """Rows of image ``index`` without the two boundary rows."""
        return len(cls.span_ids(inputs, index, args)) - (2 if cls.boundaries else 0)

    @classmethod
    def model_inputs(cls, inputs: dict[str, torch.Tensor], args: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The image inputs of the base model's forward, one prompt per image."""
        return {"pixel_values": inputs["pixel_values"]}


def check_token(tokenizer, token: str) -> int:
    """The id of ``token``, which must be a whole token of the perceiver's vocabulary."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tid == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise VlmSwapError(f"the perceiver's tokenizer has no {token!r} token")
    return int(tid)
