"""Qwen-VL families (Qwen3-VL, Qwen2.5-VL, Qwen2-VL): a dynamic patch grid merged 2 x 2.

Span: ``<|vision_start|>``, ``<|image_pad|>`` x N, ``<|vision_end|>`` with N = t * h * w / merge^2
from ``image_grid_thw``; the resolution is capped at 262,144 pixels through the processor's
``longest_edge`` / ``max_pixels``.
"""

from __future__ import annotations

from typing import Any

import torch

from .perceiver_family import DEFAULT_MAX_PIXELS, PerceiverFamily


class QwenVL(PerceiverFamily):
    input_names = ("pixel_values", "image_grid_thw")
    token_types_name = "mm_token_type_ids"

    @classmethod
    def span_start_id(cls, config, processor) -> int:
        return config.vision_start_token_id

    @classmethod
    def cap(cls, config, image_processor) -> None:
        size = dict(getattr(image_processor, "size", None) or {})
        if size.get("longest_edge", 0) > DEFAULT_MAX_PIXELS:
            size["longest_edge"] = DEFAULT_MAX_PIXELS
            image_processor.size = size
            if hasattr(image_processor, "max_pixels"):
                image_processor.max_pixels = DEFAULT_MAX_PIXELS

    @classmethod
    def args(cls, config, processor) -> dict[str, Any]:
        return {
            "vision_start_id": config.vision_start_token_id,
            "vision_end_id": config.vision_end_token_id,
            "image_token_id": config.image_token_id,
            "merge_size": config.vision_config.spatial_merge_size,
        }

    @classmethod
    def span_ids(cls, inputs, index, args) -> list[int]:
        n = int(torch.as_tensor(inputs["image_grid_thw"][index]).prod()) // args["merge_size"] ** 2
        return [args["vision_start_id"], *[args["image_token_id"]] * n, args["vision_end_id"]]

    @classmethod
    def rows_for_size(cls, image_processor, height, width, args) -> int:
        # the processor's own rule (smart_resize to the patch grid), the one vLLM counts placeholders with
        return image_processor.get_number_of_image_patches(height, width, {}) // args["merge_size"] ** 2

    @classmethod
    def model_inputs(cls, inputs, args) -> dict[str, torch.Tensor]:
        return {"pixel_values": inputs["pixel_values"], "image_grid_thw": inputs["image_grid_thw"]}


class Qwen3VL(QwenVL):
    model_types = ("qwen3_vl",)
    name = "Qwen3-VL"
    text_family = "qwen3"


class Qwen25VL(QwenVL):
    model_types = ("qwen2_5_vl",)
    name = "Qwen2.5-VL"
    text_family = "qwen2"


class Qwen2VL(QwenVL):
    model_types = ("qwen2_vl",)
    name = "Qwen2-VL"
    text_family = "qwen2"
