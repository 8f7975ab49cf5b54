"""``hf-vit``: CLIP / SigLIP / SigLIP2 vision towers from transformers.

Features are the hidden states of ``feature_layer`` (LLaVA's convention: -2 for CLIP). CLIP has a
CLS token in front of the patches, dropped by default (LLaVA's "default" strategy); SigLIP and
SigLIP2 have none. SigLIP2 (NaFlex) gives a variable number of patches per image, marked by
``pixel_attention_mask``; only the valid rows are returned.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from transformers import AutoImageProcessor, AutoModel, PreTrainedConfig

from ..errors import VlmSwapError
from .base import EncoderBackend, LoadedEncoder, fixed_resolution

# model_type of the checkpoint -> (transformers vision-tower class, has CLS, default feature layer)
VISION_TOWERS: dict[str, tuple[str, bool, int]] = {
    "clip": ("CLIPVisionModel", True, -2),
    "clip_vision_model": ("CLIPVisionModel", True, -2),
    "siglip": ("SiglipVisionModel", False, -1),
    "siglip_vision_model": ("SiglipVisionModel", False, -1),
    "siglip2": ("Siglip2VisionModel", False, -1),
    "siglip2_vision_model": ("Siglip2VisionModel", False, -1),
}


def vision_tower_config(config: PreTrainedConfig) -> PreTrainedConfig:
    """The vision-tower config inside a (possibly dual-tower) CLIP/SigLIP config."""
    if config.model_type not in VISION_TOWERS:
        raise VlmSwapError(
            f"hf-vit supports CLIP, SigLIP and SigLIP2 towers, not model_type {config.model_type!r} "
            f"(supported: {', '.join(sorted(VISION_TOWERS))})"
        )
    return getattr(config, "vision_config", None) or config


class HFViTEncoder(EncoderBackend):
    kind = "hf-vit"
    help = "CLIP / SigLIP / SigLIP2 vision tower from transformers (feature layer, CLS handled)"
    input_names = ("pixel_values", "pixel_attention_mask", "spatial_shapes")

    def __init__(self, config: PreTrainedConfig, args: dict[str, Any], model=None):
        super().__init__(config, args)
        self.model = model if model is not None else AutoModel.from_config(config)

    @property
    def feature_dim(self) -> int:
        return self.model.config.hidden_size

    def forward(self, pixel_values, pixel_attention_mask=None, spatial_shapes=None, **_):
        kwargs = {}
        if pixel_attention_mask is not None:  # SigLIP2 NaFlex: [B, P] valid-patch mask
            kwargs = {"pixel_attention_mask": pixel_attention_mask, "spatial_shapes": spatial_shapes}
        pixel_values = pixel_values.to(self.model.dtype)
        out = self.model(pixel_values=pixel_values, output_hidden_states=True, **kwargs)
        feats = out.hidden_states[self.args["feature_layer"]]  # [B, P(+1), D]
        if self.args["drop_cls"]:
            feats = feats[:, 1:]
        if pixel_attention_mask is not None:
            return feats[pixel_attention_mask.bool()]  # [R, D]
        return feats.reshape(-1, feats.shape[-1])  # [B * N, D]

    @staticmethod
    def image_rows(image_inputs: dict[str, Any], index: int, args: dict[str, Any]) -> int:
        if image_inputs.get("pixel_attention_mask") is not None:
            return int(image_inputs["pixel_attention_mask"][index].sum())
        h, w = image_inputs["pixel_values"].shape[-2:]
        patch = args["patch_size"]
        return (h // patch) * (w // patch) + (1 if args["has_cls"] and not args["drop_cls"] else 0)

    @classmethod
    def size_independent(cls, image_processor, args: dict[str, Any]) -> bool:
        # SigLIP2 NaFlex keeps the aspect ratio (rows vary with the size); CLIP crops, SigLIP squashes
        return getattr(image_processor, "max_num_patches", None) is None and fixed_resolution(image_processor)

    @classmethod
    def load(
        cls,
        source: str,
        *,
        dtype: torch.dtype | None,
        trust_remote_code: bool,
        allow_pickle: bool = False,
        stream: bool = False,
    ) -> LoadedEncoder:
        from ..checkpoints.safe import load_auto, load_config  # upgrade time only (not in exports)
        from .streaming import prefixed, pretrained

        config = load_config(source, trust_remote_code)
        vcfg = vision_tower_config(config)
        class_name, has_cls, layer = VISION_TOWERS[config.model_type]
        tower_cls = getattr(transformers, class_name)
        tower_cfg = tower_cls.config_class.from_pretrained(source)  # as from_pretrained reads it (a dual-tower's part)
        vision_model, weights = pretrained(
            tower_cls,
            source,
            tower_cfg,
            stream=stream,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
        )
        args = {"feature_layer": layer, "has_cls": has_cls, "drop_cls": has_cls, "patch_size": vcfg.patch_size}
        module = cls(vision_model.config, args, model=vision_model)
        processor = load_auto(AutoImageProcessor, source, "image processor", trust_remote_code=trust_remote_code)
        info = {"model_type": config.model_type}
        return LoadedEncoder(module, vision_model.config, processor, info, prefixed("model.", weights))
