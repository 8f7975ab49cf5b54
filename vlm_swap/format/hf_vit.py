"""``hf-vit`` at run time: a CLIP / SigLIP / SigLIP2 vision tower from transformers.

Features are the hidden states of ``feature_layer`` (LLaVA's convention: -2 for CLIP). CLIP has a
CLS token in front of the patches, dropped by default (LLaVA's "default" strategy); SigLIP and
SigLIP2 have none. SigLIP2 (NaFlex) gives a variable number of patches per image, marked by
``pixel_attention_mask``; only the valid rows are returned.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoModel, PreTrainedConfig

from .encoder import EncoderModule, ImageProcessing, fixed_resolution


class HFViTProcessing(ImageProcessing):
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


class HFViTEncoder(EncoderModule):
    kind = "hf-vit"
    processing = HFViTProcessing
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
