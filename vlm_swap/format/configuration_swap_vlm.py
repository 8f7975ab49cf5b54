"""``SwapVLMConfig``: the upgraded model's config (encoder + connector + LLM)."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


@strict
class SwapVLMConfig(PreTrainedConfig):
    r"""
    encoder_config: config of the encoder model (a vision tower or a small VLM), or None for kinds
        that are not transformers models.
    text_config: config of the LLM (a causal LM).
    encoder_kind: registered encoder kind (``perceiver``, ``hf-vit``, ...).
    encoder_args: what the encoder kind needs besides its config (feature layer, prompt ids, ...).
    connector: registered connector id.
    image_token_id: id of the per-image placeholder token in the LLM vocabulary.
    feature_token_ids: LLM token ids whose input embeddings are replaced by connector outputs,
        in the order the encoder emits its rows (image placeholder, plus vision start/end for
        perceivers).
    """

    model_type = "swap_vlm"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
        "encoder_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model", optional=True),
    }

    text_config: dict | PreTrainedConfig | None = None
    encoder_config: dict | PreTrainedConfig | None = None
    encoder_kind: str = "hf-vit"
    encoder_args: dict | None = None
    encoder_dim: int = 0
    connector: str = "mlp2x-relu"
    image_token_id: int = 0
    feature_token_ids: list[int] | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.encoder_args is None:
            self.encoder_args = {}
        if not self.feature_token_ids:
            self.feature_token_ids = [self.image_token_id]
        # Tying is the LLM's business; mirror it so generic code that reads the top config agrees.
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
