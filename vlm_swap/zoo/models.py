"""Builders of tiny, real checkpoints: llava-hf VLMs, ViTs and bare LLMs (perceivers: ``perceivers.py``).

Each builder makes a model from a real transformers config class (hidden 32-64, 1-2 layers),
a real tokenizer and processor, seeds torch so the weights are the same on every run, and saves
everything with ``save_pretrained`` so the normal loading code reads it back. They are the
embedded default of the demo and the fixtures of the tests.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as tf

from .tokenizers import LLAVA_PROCESSOR_TEMPLATE, QWEN_TEMPLATE, make_tokenizer

HIDDEN = 64
LLM_STYLE = {
    "llama2": "llama2",
    "llama3": "llama3",
    "qwen2": "qwen",
    "qwen3": "qwen",
    "mistral": "mistral",
    "gemma2": "gemma2",
    "gemma3": "gemma3",
}
#: the widths of every tiny vision tower of the zoo
TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
CLIP_MEAN, CLIP_STD = [0.4815, 0.4578, 0.4082], [0.2686, 0.2613, 0.2758]


def tiny_text_sizes(tokenizer) -> dict:
    """The widths every tiny LLM of the zoo shares (a bare LLM or the LM of a small VLM)."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    )


def text_config(family: str, tokenizer, **overrides) -> tf.PreTrainedConfig:
    """A tiny causal-LM config of ``family`` sized to ``tokenizer``."""
    common = dict(
        **tiny_text_sizes(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    common.update(overrides)
    if family in ("llama2", "llama3"):
        return tf.LlamaConfig(tie_word_embeddings=False, **common)
    if family == "qwen2":
        return tf.Qwen2Config(tie_word_embeddings=True, **common)
    if family == "qwen3":
        return tf.Qwen3Config(tie_word_embeddings=True, head_dim=16, **common)
    if family == "mistral":
        return tf.MistralConfig(tie_word_embeddings=False, sliding_window=None, **common)
    if family == "gemma2":
        return tf.Gemma2Config(
            tie_word_embeddings=True, head_dim=16, query_pre_attn_scalar=16, sliding_window=64, **common
        )
    if family == "gemma3":
        return tf.Gemma3TextConfig(
            tie_word_embeddings=True, head_dim=16, query_pre_attn_scalar=16, sliding_window=64, **common
        )
    raise ValueError(f"no tiny LLM of family {family!r}")


def vision_parts(kind: str, image_size: int = 64, patch: int = 16):
    """(vision config, image processor) of a tiny CLIP / SigLIP / SigLIP2 tower."""
    if kind == "clip":
        cfg = tf.CLIPVisionConfig(image_size=image_size, patch_size=patch, projection_dim=32, **TOWER)
        proc = tf.CLIPImageProcessor(  # resized without a crop, so shapes on the left and right stay in view
            size={"height": image_size, "width": image_size},
            do_center_crop=False,
            image_mean=CLIP_MEAN,
            image_std=CLIP_STD,
        )
    elif kind == "siglip":
        cfg = tf.SiglipVisionConfig(image_size=image_size, patch_size=patch, **TOWER)
        proc = tf.SiglipImageProcessor(size={"height": image_size, "width": image_size})
    elif kind == "siglip2":
        cfg = tf.Siglip2VisionConfig(patch_size=patch, num_patches=(image_size // patch) ** 2, **TOWER)
        proc = tf.Siglip2ImageProcessor(patch_size=patch, max_num_patches=(image_size // patch) ** 2)
    else:
        raise ValueError(f"no tiny vision tower of kind {kind!r}")
    return cfg, proc


def _save(model, processor, out: Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_llava(out: Path, *, llm: str = "llama2", vision: str = "clip", seed: int = 0) -> Path:
    """A tiny llava-hf ``LlavaForConditionalGeneration`` (the "existing" VLM a user upgrades)."""
    torch.manual_seed(seed)
    tok = make_tokenizer(LLM_STYLE[llm])
    tok.add_tokens(["<image>"], special_tokens=True)
    if tok.pad_token is None:  # llava-hf checkpoints add a <pad> token to Llama tokenizers
        tok.add_tokens(["<pad>"], special_tokens=True)
        tok.pad_token = "<pad>"
    image_token_id = tok.convert_tokens_to_ids("<image>")
    vcfg, image_proc = vision_parts(vision)
    strategy = "default" if vision == "clip" else "full"
    config = tf.LlavaConfig(
        vision_config=vcfg,
        text_config=text_config(llm, tok),
        image_token_index=image_token_id,
        image_seq_length=(vcfg.image_size // vcfg.patch_size) ** 2,
        vision_feature_select_strategy=strategy,
        vision_feature_layer=-2 if vision == "clip" else -1,
    )
    model = tf.LlavaForConditionalGeneration(config).eval()
    template = LLAVA_PROCESSOR_TEMPLATE
    if LLM_STYLE[llm] == "qwen":
        template = QWEN_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<image>\\n")
    processor = tf.LlavaProcessor(
        image_processor=image_proc,
        tokenizer=tok,
        patch_size=vcfg.patch_size,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=1 if vision == "clip" else 0,
        chat_template=template,
    )
    return _save(model, processor, out)


def build_vit(out: Path, *, kind: str = "clip", seed: int = 0) -> Path:
    """A tiny standalone vision tower checkpoint (a full dual-tower CLIPModel for ``clip``)."""
    torch.manual_seed(seed)
    vcfg, proc = vision_parts(kind)
    if kind == "clip":
        tcfg = tf.CLIPTextConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=99,
            projection_dim=32,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
        model = tf.CLIPModel(tf.CLIPConfig(text_config=tcfg.to_dict(), vision_config=vcfg.to_dict(), projection_dim=32))
    else:
        model = getattr(tf, {"siglip": "SiglipVisionModel", "siglip2": "Siglip2VisionModel"}[kind])(vcfg)
    return _save(model.eval(), proc, out)


def build_llm(out: Path, *, family: str = "qwen3", seed: int = 0) -> Path:
    """A tiny bare causal LM with its tokenizer (the paper's "build from an LLM" setting)."""
    torch.manual_seed(seed)
    tok = make_tokenizer(LLM_STYLE[family])
    model = tf.AutoModelForCausalLM.from_config(text_config(family, tok)).eval()
    return _save(model, tok, out)


def save_vision_tower(llava_dir: Path, out: Path) -> Path:
    """The vision tower of a llava-hf checkpoint saved on its own (``CLIPVisionModel`` + its image
    processor), for an ``hf-vit`` arm that re-aligns the source's own ViT with a fresh connector."""
    model = tf.LlavaForConditionalGeneration.from_pretrained(llava_dir)
    processor = tf.AutoProcessor.from_pretrained(llava_dir)
    return _save(model.model.vision_tower.eval(), processor.image_processor, out)
