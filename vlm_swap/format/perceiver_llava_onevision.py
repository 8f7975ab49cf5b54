"""LLaVA-OneVision: an anyres grid of SigLIP views plus a base view, unpadded, with newline rows.

The image processor picks the best grid from ``image_grid_pinpoints`` for the image's size, cuts
the resized image into tower-sized views and adds a base view; the model projects every view,
keeps the grid features of the unpadded image area (pooled when above ``anyres_max_9``), adds its
learned ``image_newline`` after each feature row, and appends the base view's features. All of
that lands on ``<image>`` placeholders: N = base + unpadded grid + newline rows, counted with the
family's own processor rule from ``image_sizes``.

Span: the N ``<image>`` positions (the family has no marker tokens, so no boundary rows). The
resolution is capped by keeping the grid pinpoints of at most 262,144 pixels (at least the
smallest), in the model config and the image processor alike.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

from .compat import llava_onevision_features
from .perceiver_family import DEFAULT_MAX_PIXELS, PerceiverFamily


class LlavaOnevision(PerceiverFamily):
    model_types = ("llava_onevision",)
    name = "LLaVA-OneVision"
    text_family = "qwen2"
    boundaries = False
    input_names = ("pixel_values", "image_sizes")

    @classmethod
    def span_start_id(cls, config, processor) -> int:
        return config.image_token_id

    @classmethod
    def cap(cls, config, image_processor) -> None:
        points = [list(p) for p in config.image_grid_pinpoints]
        kept = [p for p in points if p[0] * p[1] <= DEFAULT_MAX_PIXELS] or [min(points, key=lambda p: p[0] * p[1])]
        config.image_grid_pinpoints = kept
        image_processor.image_grid_pinpoints = kept

    @classmethod
    def args(cls, config, processor) -> dict[str, Any]:
        return {
            "image_token_id": config.image_token_id,
            "num_image_tokens": int(processor.num_image_tokens),
            "vision_aspect_ratio": processor.vision_aspect_ratio,
            "select_strategy": processor.vision_feature_select_strategy,
            "pinpoints": [list(p) for p in config.image_grid_pinpoints],
            "view_size": config.vision_config.image_size,
        }

    @classmethod
    def preprocess(cls, image_processor, images, args, **kwargs) -> dict[str, torch.Tensor]:
        out = image_processor(images, **{**kwargs, "return_tensors": "pt"})
        sizes = out["image_sizes"]  # [n, 2] original (height, width)
        views = [image_size_to_num_patches(s, args["pinpoints"], args["view_size"]) for s in sizes]
        # [n, V_max, 3, H, W] -> [V, 3, H, W]: the model takes the views of all images stacked
        pixels = torch.cat([out["pixel_values"][i, :v] for i, v in enumerate(views)])
        return {"pixel_values": pixels, "image_sizes": sizes}

    @classmethod
    def span_ids(cls, inputs, index, args) -> list[int]:
        height, width = (int(v) for v in inputs["image_sizes"][index])
        view_h, view_w = inputs["pixel_values"].shape[-2:]
        return [args["image_token_id"]] * _features(height, width, int(view_h), int(view_w), args)

    @classmethod
    def rows_for_size(cls, image_processor, height, width, args) -> int:
        size = image_processor.size  # every view is resized to the tower's square input
        return _features(height, width, size["height"], size["width"], args)

    @classmethod
    def model_inputs(cls, inputs, args) -> dict[str, torch.Tensor]:
        return {"pixel_values": inputs["pixel_values"], "image_sizes": inputs["image_sizes"]}


def _features(height: int, width: int, view_h: int, view_w: int, args: dict[str, Any]) -> int:
    """Rows of an image of this original size: the processor's own counting rule, on its attributes alone."""
    n = llava_onevision_features(
        height,
        width,
        view_h,
        view_w,
        pinpoints=args["pinpoints"],
        num_image_tokens=args["num_image_tokens"],
        vision_aspect_ratio=args["vision_aspect_ratio"],
    )
    return n - (1 if args["select_strategy"] == "default" else 0)
