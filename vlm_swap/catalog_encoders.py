"""Catalog entries of encoders: perceivers (small VLMs) and ViT towers, with their published architectures.

Sizes are the published ``config.json`` values, so ``vlm-swap inspect`` and ``vlm-swap pairs``
build the full-size models on the meta device offline. ``tokens_per_image`` counts the image rows
at 512 x 512 (DPA's 262,144-pixel cap, as the perceiver's processor is capped) without the two
boundary rows; ViTs at their own resolution.
"""

from __future__ import annotations

from .catalog import CatalogEntry, _clip_l14_336, _llama


def _siglip_so400m(image_size: int = 384, model_type: str = "siglip_vision_model") -> dict:
    return dict(
        model_type=model_type,
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=27,
        num_attention_heads=16,
        image_size=image_size,
        patch_size=14,
    )


def _qwen3_vl_2b() -> dict:
    text = dict(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=6144,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=262144,
        tie_word_embeddings=True,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    )
    vision = dict(
        depth=24,
        hidden_size=1024,
        intermediate_size=4096,
        num_heads=16,
        patch_size=16,
        out_hidden_size=2048,
        num_position_embeddings=2304,
        deepstack_visual_indexes=[5, 11, 17],
    )
    return dict(model_type="qwen3_vl", text_config=text, vision_config=vision, tie_word_embeddings=True)


def _qwen2_5_vl_3b() -> dict:
    text = dict(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        max_position_embeddings=128000,
        tie_word_embeddings=True,
    )
    vision = dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        patch_size=14,
        window_size=112,
        out_hidden_size=2048,
        fullatt_block_indexes=[7, 15, 23, 31],
    )
    return dict(model_type="qwen2_5_vl", text_config=text, vision_config=vision, tie_word_embeddings=True)


def _smolvlm(hidden: int, inter: int, layers: int, heads: int, kv: int) -> dict:
    text = _llama(49280, hidden, inter, layers, heads, kv, 8192, False, rope_theta=100000.0)
    text.pop("model_type")
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=512)
    vision["patch_size"] = 16
    return dict(
        model_type="idefics3",
        text_config=text,
        vision_config=vision,
        scale_factor=4,
        image_token_id=49190,
        tie_word_embeddings=False,
    )


def _llava_onevision_0_5b() -> dict:
    text = dict(
        model_type="qwen2",
        vocab_size=152000,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
    )
    pinpoints = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]
    return dict(
        model_type="llava_onevision",
        text_config=text,
        vision_config={**_siglip_so400m(), "num_hidden_layers": 26, "vision_use_head": False},  # last layer dropped
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_token_index=151646,
        tie_word_embeddings=True,
    )


def _gemma3_4b() -> dict:
    text = dict(
        vocab_size=262208,
        hidden_size=2560,
        intermediate_size=10240,
        num_hidden_layers=34,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=1024,
        max_position_embeddings=131072,
    )
    vision = {**_siglip_so400m(896), "vision_use_head": False}
    vision.pop("model_type")
    return dict(model_type="gemma3", text_config=text, vision_config=vision, mm_tokens_per_image=256)


ENCODER_ENTRIES = (
    CatalogEntry(
        "qwen3-vl-2b",
        "Qwen/Qwen3-VL-2B-Instruct",
        "perceiver",
        "qwen3",
        2048,
        256,
        encoder_kind="perceiver",
        arch=_qwen3_vl_2b(),
    ),
    CatalogEntry("qwen3-vl-4b", "Qwen/Qwen3-VL-4B-Instruct", "perceiver", "qwen3", 2560, 256, encoder_kind="perceiver"),
    CatalogEntry(
        "qwen2.5-vl-3b",
        "Qwen/Qwen2.5-VL-3B-Instruct",
        "perceiver",
        "qwen2",
        2048,
        324,
        encoder_kind="perceiver",
        arch=_qwen2_5_vl_3b(),
    ),
    # SmolVLM: 512 px tiles of 64 tokens; at 512 x 512 one global view -> <global-img> + 64 inner rows
    CatalogEntry(
        "smolvlm-256m",
        "HuggingFaceTB/SmolVLM-256M-Instruct",
        "perceiver",
        "smollm2",
        576,
        65,
        encoder_kind="perceiver",
        arch=_smolvlm(576, 1536, 30, 9, 3),
    ),
    CatalogEntry(
        "smolvlm-500m",
        "HuggingFaceTB/SmolVLM-500M-Instruct",
        "perceiver",
        "smollm2",
        960,
        65,
        encoder_kind="perceiver",
        arch=_smolvlm(960, 2560, 32, 15, 5),
    ),
    # LLaVA-OneVision at the cap: one 384 px view + the base view -> 729 + 27 x 27 + 27 newline rows
    CatalogEntry(
        "llava-onevision-0.5b",
        "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
        "perceiver",
        "qwen2",
        896,
        1485,
        encoder_kind="perceiver",
        arch=_llava_onevision_0_5b(),
        boundaries=False,
    ),
    CatalogEntry(
        "gemma-3-4b",
        "google/gemma-3-4b-it",
        "perceiver",
        "gemma3",
        2560,
        256,
        encoder_kind="perceiver",
        arch=_gemma3_4b(),
    ),
    CatalogEntry(
        "clip-vit-l-14-336",
        "openai/clip-vit-large-patch14-336",
        "vit",
        "clip",
        1024,
        576,
        encoder_kind="hf-vit",
        arch=_clip_l14_336(),
    ),
    CatalogEntry(
        "siglip-so400m-384",
        "google/siglip-so400m-patch14-384",
        "vit",
        "siglip",
        1152,
        729,
        encoder_kind="hf-vit",
        arch=_siglip_so400m(),
    ),
    # the fixed-resolution SigLIP2 checkpoints use the SigLIP architecture
    CatalogEntry(
        "siglip2-so400m-384",
        "google/siglip2-so400m-patch14-384",
        "vit",
        "siglip2",
        1152,
        729,
        encoder_kind="hf-vit",
        arch=_siglip_so400m(),
    ),
)
