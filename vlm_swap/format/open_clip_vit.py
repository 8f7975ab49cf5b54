"""``open-clip`` at run time: the visual tower of an OpenCLIP model, rebuilt from its open_clip model config.

OpenCLIP has no HF config class, so ``encoder_config`` is None and ``encoder_args["model_cfg"]`` holds the
tower's part of the open_clip model config (embed_dim, quick_gelu, vision_cfg): enough to rebuild its
architecture without network. Features are the tokens of block ``feature_layer`` (-2 by default, LLaVA's
convention) from open_clip's ``forward_intermediates``, without the CLS token. open_clip is imported only
when an open-clip encoder is built.
"""

from __future__ import annotations

from typing import Any

import torch

from .compat import open_clip_vision_tower
from .encoder import EncoderModule, StridedProcessing


def build_visual(model_cfg: dict[str, Any]) -> torch.nn.Module:
    """The visual tower of an open_clip model config, randomly initialised; never downloads (timm trunks too)."""
    vision_cfg = {**model_cfg["vision_cfg"], "timm_model_pretrained": False}
    return open_clip_vision_tower(model_cfg["embed_dim"], vision_cfg, quick_gelu=model_cfg.get("quick_gelu", False))


class OpenCLIPEncoder(EncoderModule):
    kind = "open-clip"
    processing = StridedProcessing

    def __init__(self, config: None, args: dict[str, Any], model=None):
        super().__init__(config, args)
        self.model = model if model is not None else build_visual(args["model_cfg"])

    @property
    def feature_dim(self) -> int:
        trunk = getattr(self.model, "trunk", None)  # timm trunk, else a native open_clip ViT
        return trunk.embed_dim if trunk is not None else self.model.transformer.width

    def forward(self, pixel_values, **_):
        dtype = next(self.model.parameters()).dtype
        out = self.model.forward_intermediates(
            pixel_values.to(dtype),
            indices=[self.args["feature_layer"]],
            output_fmt="NLC",
            intermediates_only=True,
            stop_early=True,
        )
        feats = out["image_intermediates"][0]  # [B, N, D]: patch tokens, CLS split off by open_clip
        return feats.reshape(-1, feats.shape[-1])  # [B * N, D]
