"""``timm`` at run time: a timm ViT held by transformers' ``TimmWrapperModel`` (model_type ``timm_wrapper``).

Features are the tokens of block ``feature_layer`` (-2 by default: LLaVA's convention, the same as
``hidden_states[-2]``) from timm's ``forward_intermediates``, with the prefix tokens (CLS and register
tokens) dropped. timm is imported by ``TimmWrapperModel`` when the model is built.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

from .encoder import EncoderModule, StridedProcessing


class TimmViTEncoder(EncoderModule):
    kind = "timm"
    processing = StridedProcessing

    def __init__(self, config: PreTrainedConfig, args: dict[str, Any], model=None):
        super().__init__(config, args)
        if model is None:
            from transformers import TimmWrapperModel

            model = TimmWrapperModel(config)
        self.model = model

    @property
    def feature_dim(self) -> int:
        return self.model.timm_model.embed_dim

    def forward(self, pixel_values, **_):
        vit = self.model.timm_model
        feats = vit.forward_intermediates(  # [B, N, D]: patch tokens only, prefix tokens split off by timm
            pixel_values.to(self.model.dtype),
            indices=[self.args["feature_layer"]],
            output_fmt="NLC",
            intermediates_only=True,
            stop_early=True,
        )[0]
        return feats.reshape(-1, feats.shape[-1])  # [B * N, D]
