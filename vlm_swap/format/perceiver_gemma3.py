"""Gemma 3: one fixed-resolution SigLIP view pooled to ``mm_tokens_per_image`` soft tokens.

Span: ``<start_of_image>``, ``<image_soft_token>`` x N, ``<end_of_image>`` with N the config's
``mm_tokens_per_image`` (256 in the released models) for every image. The tower's resolution is
fixed by its position embeddings (896 px in the released models), so there is no pixel cap to
apply; pan-and-scan crops are turned off (one view per image). The image positions attend to each
other bidirectionally in Gemma 3, which the base model does from ``token_type_ids``.
"""

from __future__ import annotations

from typing import Any

import torch

from .perceiver_family import PerceiverFamily


class Gemma3(PerceiverFamily):
    model_types = ("gemma3",)
    name = "Gemma 3"
    text_family = "gemma3"
    input_names = ("pixel_values",)
    token_types_name = "token_type_ids"

    @classmethod
    def size_independent(cls, image_processor, args) -> bool:
        return True  # one fixed-resolution view, pooled to the same soft tokens

    @classmethod
    def span_start_id(cls, config, processor) -> int:
        return config.boi_token_index

    @classmethod
    def cap(cls, config, image_processor) -> None:
        image_processor.do_pan_and_scan = False

    @classmethod
    def args(cls, config, processor) -> dict[str, Any]:
        return {
            "vision_start_id": config.boi_token_index,
            "vision_end_id": config.eoi_token_index,
            "image_token_id": config.image_token_index,
            "tokens_per_image": config.mm_tokens_per_image,
        }

    @classmethod
    def preprocess(cls, image_processor, images, args, **kwargs) -> dict[str, torch.Tensor]:
        out = image_processor(images, **{**kwargs, "do_pan_and_scan": False, "return_tensors": "pt"})
        return {"pixel_values": out["pixel_values"]}  # [n, 3, H, W]; num_crops is all zeros without pan-and-scan

    @classmethod
    def span_ids(cls, inputs, index, args) -> list[int]:
        return [args["vision_start_id"], *[args["image_token_id"]] * args["tokens_per_image"], args["vision_end_id"]]
