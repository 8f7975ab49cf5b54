"""``SwapVLMForConditionalGeneration``: encoder -> connector -> LLM, a real PreTrainedModel.

The LLM is a plain transformers causal LM kept whole (``language_model``), so its weights,
cache, attention implementation and generation behave as they do alone. Encoder rows
``[R, D_enc]`` go through the connector to ``[R, D_llm]`` and replace, in order, the input
embeddings at the placeholder positions (``feature_token_ids``). ``forward`` also takes those
encoder rows precomputed (``image_features``), so a frozen encoder's output can be reused.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_swap_vlm import SwapVLMConfig
from .errors import VlmSwapError
from .kinds import connector_kind, encoder_module


class SwapVLMPreTrainedModel(PreTrainedModel):
    config: SwapVLMConfig
    config_class = SwapVLMConfig
    base_model_prefix = "swap_vlm"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True


class SwapVLMForConditionalGeneration(SwapVLMPreTrainedModel, GenerationMixin):
    def __init__(self, config: SwapVLMConfig):
        super().__init__(config)
        self.encoder = encoder_module(config.encoder_kind)(config.encoder_config, config.encoder_args)
        self.connector = connector_kind(config.connector).build(config.encoder_dim, config.text_config.hidden_size)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self._no_split_modules = sorted(
            set(getattr(self.language_model, "_no_split_modules", None) or [])
            | set(getattr(self.encoder.model, "_no_split_modules", None) or [])
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_image_features(self, image_features: torch.Tensor | None = None, **image_inputs) -> torch.Tensor:
        """Encoder rows (computed here, or given as ``image_features`` ``[R, D_enc]``) through the connector."""
        feats = self.encoder(**image_inputs) if image_features is None else image_features  # [R, D_enc]
        return self.connector(feats)  # [R, D_llm], in the connector's dtype

    def placeholder_mask(self, input_ids: torch.Tensor, n_rows: int) -> torch.Tensor:
        ids = torch.tensor(self.config.feature_token_ids, device=input_ids.device)
        mask = torch.isin(input_ids, ids)  # [B, L]
        n_tokens = int(mask.sum())
        if n_tokens != n_rows:
            raise VlmSwapError(
                f"image features and image tokens do not match: {n_tokens} placeholder tokens in the prompt, "
                f"{n_rows} feature rows from the encoder"
            )
        return mask

    def _validate_model_kwargs(self, model_kwargs: dict) -> None:
        # generate() checks kwargs against forward's signature; the encoder's inputs reach forward via **kwargs
        # (a private hook of GenerationMixin, pinned by tests/test_compat.py)
        extra = {k: model_kwargs.pop(k) for k in self.encoder.input_names if k in model_kwargs}
        try:
            super()._validate_model_kwargs(model_kwargs)
        finally:
            model_kwargs.update(extra)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        image_features: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        # the encoder's other inputs (image_grid_thw, pixel_attention_mask, ...) never reach the LLM
        image_inputs = {k: kwargs.pop(k) for k in self.encoder.input_names if k in kwargs}
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)  # [B, L, D_llm]
        if pixel_values is not None or image_features is not None:
            if input_ids is None:
                raise ValueError("images need input_ids to find their placeholder positions")
            if image_features is None:
                image_inputs["pixel_values"] = pixel_values
            else:  # encoder rows [R, D_enc] computed earlier (a frozen encoder's): the pixel inputs are not used
                image_inputs = {}
            feats = self.get_image_features(image_features, **image_inputs)  # [R, D_llm]
            mask = self.placeholder_mask(input_ids, feats.shape[0])
            inputs_embeds = inputs_embeds.masked_scatter(mask.unsqueeze(-1), feats.to(inputs_embeds.dtype))
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            labels=labels,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
