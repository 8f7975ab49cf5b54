"""A catalog of well-known models: id -> hub id and the facts listings and pair checks need offline.

Facts are from the models' published configs: the width whose hidden states cross over
(``hidden_size``: the perceiver's LM width, a ViT's width, an LLM's width), tokens per image at
the default resolution (perceivers at 512x512 = 262,144 pixels, DPA's training cap), the context
length of LLMs, and the text family (which decides "same family" in pair checks).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import AutoConfig, PreTrainedConfig

from .errors import VlmSwapError
from .registry import Registry


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    hub_id: str
    role: str  # "perceiver" | "vit" | "llm" | "vlm"
    family: str  # text family for perceivers/LLMs/VLMs, tower family for ViTs
    hidden_size: int
    tokens_per_image: int = 0
    context: int = 0
    encoder_kind: str = ""  # for perceivers/ViTs: the encoder kind that loads it
    arch: dict | None = None  # the published config (model_type + sizes): builds the model on the meta device
    boundaries: bool = True  # perceivers: a marker row before and after the image rows (LLaVA-OneVision has none)

    @property
    def spec(self) -> str:
        return f"{self.encoder_kind}:{self.id}" if self.encoder_kind else self.id

    def config(self) -> PreTrainedConfig:
        """The full-size architecture as a transformers config (no download)."""
        if self.arch is None:
            raise VlmSwapError(f"the catalog has no architecture for {self.id}; inspect {self.hub_id} instead")
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
            MODEL_MAPPING_NAMES,
        )

        arch = dict(self.arch)
        model_type = arch.pop("model_type")
        cfg = AutoConfig.for_model(model_type, **arch)
        names = {"llm": MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "vit": MODEL_MAPPING_NAMES}.get(
            self.role, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
        )
        cfg.architectures = [names[model_type]]
        return cfg


def _llama(vocab, hidden, inter, layers, heads, kv, context, tie, **extra) -> dict:
    return dict(
        model_type="llama",
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=context,
        tie_word_embeddings=tie,
        **extra,
    )


def _qwen3(hidden, inter, layers, heads, tie) -> dict:
    return dict(
        model_type="qwen3",
        vocab_size=151936,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
        tie_word_embeddings=tie,
    )


def _clip_l14_336() -> dict:
    """openai/clip-vit-large-patch14-336's vision tower (LLaVA-1.5's, and a catalog ViT)."""
    return dict(
        model_type="clip_vision_model",
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )


def _llava15(text: dict) -> dict:
    vision = _clip_l14_336()
    return dict(model_type="llava", vision_config=vision, text_config=text, image_token_index=32000)


CATALOG: Registry[CatalogEntry] = Registry("catalog model")
for _e in (
    CatalogEntry(
        "qwen3-0.6b", "Qwen/Qwen3-0.6B", "llm", "qwen3", 1024, context=40960, arch=_qwen3(1024, 3072, 28, 16, True)
    ),
    CatalogEntry(
        "qwen3-1.7b", "Qwen/Qwen3-1.7B", "llm", "qwen3", 2048, context=40960, arch=_qwen3(2048, 6144, 28, 16, True)
    ),
    CatalogEntry(
        "qwen3-4b", "Qwen/Qwen3-4B", "llm", "qwen3", 2560, context=40960, arch=_qwen3(2560, 9728, 36, 32, True)
    ),
    CatalogEntry(
        "qwen3-8b", "Qwen/Qwen3-8B", "llm", "qwen3", 4096, context=40960, arch=_qwen3(4096, 12288, 36, 32, False)
    ),
    CatalogEntry(
        "llama-3.2-1b",
        "meta-llama/Llama-3.2-1B-Instruct",
        "llm",
        "llama3",
        2048,
        context=131072,
        arch=_llama(128256, 2048, 8192, 16, 32, 8, 131072, True, head_dim=64),
    ),
    CatalogEntry(
        "llama-3.2-3b",
        "meta-llama/Llama-3.2-3B-Instruct",
        "llm",
        "llama3",
        3072,
        context=131072,
        arch=_llama(128256, 3072, 8192, 28, 24, 8, 131072, True, head_dim=128),
    ),
    CatalogEntry(
        "vicuna-7b",
        "lmsys/vicuna-7b-v1.5",
        "llm",
        "llama2",
        4096,
        context=4096,
        arch=_llama(32000, 4096, 11008, 32, 32, 32, 4096, False),
    ),
    CatalogEntry(
        "vicuna-13b",
        "lmsys/vicuna-13b-v1.5",
        "llm",
        "llama2",
        5120,
        context=4096,
        arch=_llama(32000, 5120, 13824, 40, 40, 40, 4096, False),
    ),
    CatalogEntry(
        "llava-1.5-7b-hf",
        "llava-hf/llava-1.5-7b-hf",
        "vlm",
        "llama2",
        4096,
        576,
        4096,
        arch=_llava15(_llama(32064, 4096, 11008, 32, 32, 32, 4096, False)),
    ),
    CatalogEntry(
        "llava-1.5-13b-hf",
        "llava-hf/llava-1.5-13b-hf",
        "vlm",
        "llama2",
        5120,
        576,
        4096,
        arch=_llava15(_llama(32064, 5120, 13824, 40, 40, 40, 4096, False)),
    ),
):
    CATALOG.register(_e.id, _e)


# --- Source VLMs (LLaVA-1.6) and target LLMs (Qwen3 14B/32B), from their published config.json ---


def _llava_next(text: dict, image_token_index: int) -> dict:
    """llava-hf LLaVA-1.6: LLaVA-1.5's CLIP-L/336 tower and projector, any-res crops and image_newline."""
    cfg = _llava15(text)
    pinpoints = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    cfg.update(model_type="llava_next", image_token_index=image_token_index, image_grid_pinpoints=pinpoints)
    return cfg


def _mistral_7b(vocab: int) -> dict:
    """Mistral-7B-Instruct-v0.2's LLM (32k context, rope theta 1e6, no sliding window)."""
    return dict(
        model_type="mistral",
        vocab_size=vocab,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        sliding_window=None,
        tie_word_embeddings=False,
    )


for _e in (
    CatalogEntry(
        "qwen3-14b", "Qwen/Qwen3-14B", "llm", "qwen3", 5120, context=40960, arch=_qwen3(5120, 17408, 40, 40, False)
    ),
    CatalogEntry(
        "qwen3-32b", "Qwen/Qwen3-32B", "llm", "qwen3", 5120, context=40960, arch=_qwen3(5120, 25600, 64, 64, False)
    ),
    CatalogEntry(
        "llava-v1.6-mistral-7b-hf",
        "llava-hf/llava-v1.6-mistral-7b-hf",
        "vlm",
        "mistral",
        4096,
        576,
        32768,
        arch=_llava_next(_mistral_7b(32064), 32000),
    ),
    CatalogEntry(
        "llava-v1.6-vicuna-7b-hf",
        "llava-hf/llava-v1.6-vicuna-7b-hf",
        "vlm",
        "llama2",
        4096,
        576,
        4096,
        arch=_llava_next(_llama(32064, 4096, 11008, 32, 32, 32, 4096, False), 32000),
    ),
    CatalogEntry(
        "llava-v1.6-vicuna-13b-hf",
        "llava-hf/llava-v1.6-vicuna-13b-hf",
        "vlm",
        "llama2",
        5120,
        576,
        4096,
        arch=_llava_next(_llama(32064, 5120, 13824, 40, 40, 40, 4096, False), 32000),
    ),
):
    CATALOG.register(_e.id, _e)


# Perceivers and ViT towers live in their own module (they register into the same catalog).
from .catalog_encoders import ENCODER_ENTRIES  # noqa: E402

for _e in ENCODER_ENTRIES:
    CATALOG.register(_e.id, _e)
