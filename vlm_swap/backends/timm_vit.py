"""``timm`` at upgrade time: a timm hub checkpoint read into the format's ``TimmViTEncoder``.

The encoder config is a ``TimmWrapperConfig``, saved inside the upgraded model's config.json like any HF
sub-config. The image processor is a ``CLIPImageProcessor`` set up like timm's eval transform (resize to
size / crop_pct, center crop, mean/std), because ``TimmWrapperImageProcessor`` keeps its settings in the timm
config.json and cannot be saved inside a composite processor; its crop can sit one pixel off timm's when the
margin is odd (torchvision rounds it, transformers floors it). timm is imported only when a timm encoder is used.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from transformers import CLIPImageProcessor

from ..checkpoints.atomic import read_json
from ..errors import VlmSwapError
from ..format.timm_vit import TimmViTEncoder
from .base import EncoderBackend, LoadedEncoder, LoadOptions
from .eval_transform import clip_processor
from .streaming import prefixed, pretrained


def timm_config(raw: dict[str, Any], source: str):
    """A timm hub config.json dict -> a ``TimmWrapperConfig`` without a classifier head."""
    import timm
    from transformers import TimmWrapperConfig

    arch = raw.get("architecture")
    if not arch:
        raise VlmSwapError(f"{source}: config.json has no 'architecture': not a timm checkpoint")
    if not timm.is_model(arch):
        raise VlmSwapError(f"unknown timm architecture {arch!r} in {source} (timm {timm.__version__})")
    raw = {k: v for k, v in raw.items() if k not in ("label_names", "label_descriptions")} | {"num_classes": 0}
    # timm >= 1.0.31 records num_classes in model_args too; TimmWrapperModel passes its own num_classes=0
    raw["model_args"] = {k: v for k, v in (raw.get("model_args") or {}).items() if k != "num_classes"}
    return TimmWrapperConfig.from_dict(raw)


def image_processor(data: dict[str, Any]) -> CLIPImageProcessor:
    """timm's eval transform (a resolved data config) as a transformers image processor."""
    _, h, w = data["input_size"]
    scale = [math.floor(x / data["crop_pct"]) for x in (h, w)]
    if data["crop_mode"] == "center":  # shorter side to size / crop_pct, then center crop
        size = {"shortest_edge": min(scale)}
    elif data["crop_mode"] == "squash":  # each side to size / crop_pct, then center crop
        size = {"height": scale[0], "width": scale[1]}
    else:
        raise VlmSwapError(f"timm crop_mode {data['crop_mode']!r} is not supported (center, squash)")
    return clip_processor("timm", size, (h, w), True, data["interpolation"], data["mean"], data["std"])


class TimmBackend(EncoderBackend):
    runtime = TimmViTEncoder
    help = "any timm ViT via transformers' TimmWrapperModel (feature layer, CLS/register tokens dropped)"

    @classmethod
    def load(cls, source: str, options: LoadOptions = LoadOptions()) -> LoadedEncoder:
        import timm.data
        from transformers import TimmWrapperModel

        raw = read_json(Path(source) / "config.json")
        config = timm_config(raw, source)
        no_remote_code = dataclasses.replace(options, trust_remote_code=False)  # timm checkpoints hold no code
        model, weights = pretrained(TimmWrapperModel, source, config, no_remote_code, config=config)
        vit = model.timm_model
        if not all(hasattr(vit, a) for a in ("patch_embed", "num_prefix_tokens", "forward_intermediates")):
            raise VlmSwapError(f"timm architecture {config.architecture!r} is not a ViT (no patch tokens)")
        (h, w), (gh, gw) = vit.patch_embed.img_size, vit.patch_embed.grid_size
        args = {"feature_layer": -2, "stride": [h // gh, w // gw]}
        # the model's own input size wins over the checkpoint's recommendation (fixed-size ViTs assert it)
        data = timm.data.resolve_data_config({"input_size": (3, h, w)}, pretrained_cfg=raw.get("pretrained_cfg"))
        module = TimmViTEncoder(model.config, args, model=model)
        info = {
            "model_type": "timm_wrapper",
            "architecture": config.architecture,
            "prefix_tokens": vit.num_prefix_tokens,
        }
        return LoadedEncoder(module, model.config, image_processor(data), info, prefixed("model.", weights))
