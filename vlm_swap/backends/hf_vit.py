"""``hf-vit`` at upgrade time: a CLIP / SigLIP / SigLIP2 checkpoint (a vision tower or a dual tower) read into
the format's ``HFViTEncoder`` with its image processor."""

from __future__ import annotations

import transformers
from transformers import AutoImageProcessor, PreTrainedConfig

from ..checkpoints.safe import load_auto, load_config
from ..errors import VlmSwapError
from ..format.hf_vit import HFViTEncoder
from .base import EncoderBackend, LoadedEncoder, LoadOptions
from .streaming import prefixed, pretrained

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


class HFViTBackend(EncoderBackend):
    runtime = HFViTEncoder
    help = "CLIP / SigLIP / SigLIP2 vision tower from transformers (feature layer, CLS handled)"

    @classmethod
    def load(cls, source: str, options: LoadOptions = LoadOptions()) -> LoadedEncoder:
        config = load_config(source, options.trust_remote_code)
        vcfg = vision_tower_config(config)
        class_name, has_cls, layer = VISION_TOWERS[config.model_type]
        tower_cls = getattr(transformers, class_name)
        tower_cfg = tower_cls.config_class.from_pretrained(source)  # as from_pretrained reads it (a dual-tower's part)
        vision_model, weights = pretrained(tower_cls, source, tower_cfg, options)
        args = {"feature_layer": layer, "has_cls": has_cls, "drop_cls": has_cls, "patch_size": vcfg.patch_size}
        module = HFViTEncoder(vision_model.config, args, model=vision_model)
        processor = load_auto(
            AutoImageProcessor, source, "image processor", trust_remote_code=options.trust_remote_code
        )
        info = {"model_type": config.model_type}
        return LoadedEncoder(module, vision_model.config, processor, info, prefixed("model.", weights))
