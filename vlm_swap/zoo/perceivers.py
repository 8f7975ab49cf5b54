"""Builders of tiny, real small-VLM perceivers: one per family ``vlm_swap.format.perceiver`` supports.

Each is the family's own ``*ForConditionalGeneration`` built from its real config classes (hidden
32-64, 1-2 layers), with its real processor, a tiny tokenizer holding the family's special tokens
and a chat template of the family's shape, saved with ``save_pretrained``. Image sizes are small
but keep each family's rules live: Qwen's dynamic grid, Idefics3's tile splitting, LLaVA-OneVision's
anyres grid, Gemma 3's fixed soft-token count.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as tf

from .models import CLIP_MEAN, CLIP_STD, HIDDEN, TOWER, _save, text_config, tiny_text_sizes
from .tokenizers import GEMMA3_MM_TEMPLATE, ONEVISION_TEMPLATE, QWEN_TEMPLATE, make_tokenizer

PERCEIVER_BUILD_FAMILIES = ("qwen3_vl", "qwen2_5_vl", "qwen2_vl", "idefics3", "llava_onevision", "gemma3")


def build_perceiver(out: Path, *, family: str = "qwen3_vl", seed: int = 0) -> Path:
    """A tiny small VLM of ``family`` (see ``PERCEIVER_BUILD_FAMILIES``) with its real processor."""
    builders = {
        "qwen3_vl": _qwen,
        "qwen2_5_vl": _qwen,
        "qwen2_vl": _qwen,
        "idefics3": _idefics3,
        "llava_onevision": _llava_onevision,
        "gemma3": _gemma3,
    }
    if family not in builders:
        raise ValueError(f"no tiny perceiver of family {family!r}")
    torch.manual_seed(seed)
    model, processor = builders[family](family)
    return _save(model.eval(), processor, out)


def _qwen(family: str):
    tok = make_tokenizer("qwen")
    ids = {
        "image_token_id": tok.convert_tokens_to_ids("<|image_pad|>"),
        "video_token_id": tok.convert_tokens_to_ids("<|video_pad|>"),
        "vision_start_token_id": tok.convert_tokens_to_ids("<|vision_start|>"),
        "vision_end_token_id": tok.convert_tokens_to_ids("<|vision_end|>"),
    }
    text = dict(
        **tiny_text_sizes(tok),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]},
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=HIDDEN,
    )
    if family == "qwen3_vl":
        text["head_dim"] = 16
        text["rope_parameters"]["mrope_interleaved"] = True
        config = tf.Qwen3VLConfig(
            text_config=text,
            vision_config=dict(patch_size=16, num_position_embeddings=64, deepstack_visual_indexes=[0], **vision),
            tie_word_embeddings=True,
            **ids,
        )
        model = tf.Qwen3VLForConditionalGeneration(config)
        patch, video_proc = 16, tf.Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2)
        proc_cls = tf.Qwen3VLProcessor
    elif family == "qwen2_vl":
        config = tf.Qwen2VLConfig(
            text_config=text,
            vision_config=dict(
                depth=2, embed_dim=32, hidden_size=HIDDEN, mlp_ratio=2, num_heads=2, patch_size=14, spatial_merge_size=2
            ),
            tie_word_embeddings=True,
            **ids,
        )
        model = tf.Qwen2VLForConditionalGeneration(config)
        patch, video_proc = 14, tf.Qwen2VLVideoProcessor(patch_size=14, merge_size=2, temporal_patch_size=2)
        proc_cls = tf.Qwen2VLProcessor
    else:
        config = tf.Qwen2_5_VLConfig(
            text_config=text,
            vision_config=dict(patch_size=14, window_size=56, fullatt_block_indexes=[1], **vision),
            tie_word_embeddings=True,
            **ids,
        )
        model = tf.Qwen2_5_VLForConditionalGeneration(config)
        patch, video_proc = 14, tf.Qwen2VLVideoProcessor(patch_size=14, merge_size=2, temporal_patch_size=2)
        proc_cls = tf.Qwen2_5_VLProcessor
    factor = patch * 2
    image_proc = tf.Qwen2VLImageProcessor(
        patch_size=patch,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": factor * factor, "longest_edge": 4 * factor * 4 * factor},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    processor = proc_cls(
        image_processor=image_proc, tokenizer=tok, video_processor=video_proc, chat_template=QWEN_TEMPLATE
    )
    return model, processor


def _idefics3(family: str):
    """SmolVLM's layout: 32 px tiles of 4 tokens each (patch 8, pixel shuffle 2), images split up to 2 x 2."""
    tok = make_tokenizer("smolvlm")
    config = tf.Idefics3Config(
        vision_config=dict(image_size=32, patch_size=8, **TOWER),
        text_config=text_config("llama3", tok, bos_token_id=None).to_dict(),
        scale_factor=2,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False,
    )
    model = tf.Idefics3ForConditionalGeneration(config)
    image_proc = tf.Idefics3ImageProcessor(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, image_mean=CLIP_MEAN, image_std=CLIP_STD
    )
    processor = tf.Idefics3Processor(image_processor=image_proc, tokenizer=tok, image_seq_len=4)
    processor.chat_template = tok.chat_template
    return model, processor


def _llava_onevision(family: str):
    """LLaVA-OneVision's layout: 32 px SigLIP views (2 x 2 features), an anyres grid of up to 2 x 2 views."""
    tok = make_tokenizer("qwen", extra_special=("<image>", "<video>"))
    image, video = tok.convert_tokens_to_ids("<image>"), tok.convert_tokens_to_ids("<video>")
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    config = tf.LlavaOnevisionConfig(
        vision_config=tf.SiglipVisionConfig(image_size=32, patch_size=16, **TOWER).to_dict(),
        text_config=text_config("qwen2", tok).to_dict(),
        image_token_id=image,
        video_token_id=video,
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        tie_word_embeddings=True,
    )
    model = tf.LlavaOnevisionForConditionalGeneration(config)
    image_proc = tf.LlavaOnevisionImageProcessor(
        size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints, image_mean=CLIP_MEAN, image_std=CLIP_STD
    )
    video_proc = tf.LlavaOnevisionVideoProcessor(size={"height": 32, "width": 32})
    processor = tf.LlavaOnevisionProcessor(
        image_processor=image_proc,
        tokenizer=tok,
        video_processor=video_proc,
        num_image_tokens=4,
        vision_feature_select_strategy="full",
        chat_template=ONEVISION_TEMPLATE,
    )
    return model, processor


def _gemma3(family: str):
    """Gemma 3's layout: a fixed 64 px SigLIP view (4 x 4 patches) pooled to 4 soft tokens between boi/eoi."""
    # Gemma 3 tokenizers name these three (``tokenizer.boi_token`` ...); its processor reads them.
    named = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tok = make_tokenizer("gemma3", named=named)
    config = tf.Gemma3Config(
        text_config=text_config("gemma3", tok).to_dict(),
        vision_config=tf.SiglipVisionConfig(image_size=64, patch_size=16, **TOWER).to_dict(),
        mm_tokens_per_image=4,
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
        tie_word_embeddings=True,
    )
    model = tf.Gemma3ForConditionalGeneration(config)
    image_proc = tf.Gemma3ImageProcessor(size={"height": 64, "width": 64}, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    processor = tf.Gemma3Processor(
        image_processor=image_proc, tokenizer=tok, chat_template=GEMMA3_MM_TEMPLATE, image_seq_length=4
    )
    return model, processor
