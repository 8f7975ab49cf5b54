"""Builders of tiny source VLMs in the other layouts vlm-swap upgrades: LLaVA-NeXT and original LLaVA.

``build_llava_next`` saves a real llava-hf ``LlavaNextForConditionalGeneration`` (any-resolution
crops, ``image_newline``) with ``save_pretrained``. ``build_llava_original`` writes the original
LLaVA repository's layout by hand, as its checkpoints are published: a flat config.json (the LLM's
config at the top level plus ``mm_*`` keys, ``model_type`` "llava"), sharded safetensors with the
keys ``model.*`` / ``lm_head.*`` / ``model.mm_projector.*`` / ``model.vision_tower.vision_tower.*``
and an index, the tokenizer files and a generation config. A Qwen2.5-VL source is the tiny
perceiver of ``models.build_perceiver(family="qwen2_5_vl")``: the same real checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers as tf
from safetensors.torch import save_file

from .models import LLM_STYLE, _save, text_config, vision_parts
from .tokenizers import LLAVA_PROCESSOR_TEMPLATE, make_tokenizer

# llava-hf's LLaVA-1.6 Mistral processor template: "[INST] <image>\nquestion [/INST]".
LLAVA_NEXT_MISTRAL_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{- '[INST] ' }}"
    "{%- for item in message['content'] | selectattr('type', 'equalto', 'image') %}{{- '<image>\\n' }}{%- endfor %}"
    "{%- for item in message['content'] | selectattr('type', 'equalto', 'text') %}{{- item['text'] }}{%- endfor %}"
    "{{- ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{%- for item in message['content'] | selectattr('type', 'equalto', 'text') %}{{- ' ' + item['text'] }}"
    "{%- endfor %}{{- eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
)
ORIGINAL_ARCHITECTURES = {"llama2": "LlavaLlamaForCausalLM", "mistral": "LlavaMistralForCausalLM"}
ORIGINAL_MODEL_TYPES = {"llama2": "llava", "mistral": "llava_mistral"}


def _llava_tokenizer(llm: str):
    tok = make_tokenizer(LLM_STYLE[llm])
    tok.add_tokens(["<image>"], special_tokens=True)
    if tok.pad_token is None:  # llava-hf checkpoints add a <pad> token to Llama/Mistral tokenizers
        tok.add_tokens(["<pad>"], special_tokens=True)
        tok.pad_token = "<pad>"
    return tok


def build_llava_next(out: Path, *, llm: str = "mistral", seed: int = 0) -> Path:
    """A tiny llava-hf ``LlavaNextForConditionalGeneration`` (LLaVA-1.6: any-res crops + image_newline)."""
    torch.manual_seed(seed)
    tok = _llava_tokenizer(llm)
    vcfg, _ = vision_parts("clip")
    size = vcfg.image_size
    pinpoints = [[size, 2 * size], [2 * size, size], [2 * size, 2 * size]]
    config = tf.LlavaNextConfig(
        vision_config=vcfg,
        text_config=text_config(llm, tok),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        image_seq_length=(size // vcfg.patch_size) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    model = tf.LlavaNextForConditionalGeneration(config).eval()
    image_proc = tf.LlavaNextImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}, image_grid_pinpoints=pinpoints
    )
    template = LLAVA_NEXT_MISTRAL_TEMPLATE if llm == "mistral" else LLAVA_PROCESSOR_TEMPLATE
    processor = tf.LlavaNextProcessor(
        image_processor=image_proc,
        tokenizer=tok,
        patch_size=vcfg.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=template,
    )
    return _save(model, processor, out)


def original_llava_config(text: tf.PreTrainedConfig, llm: str, mm_hidden: int) -> dict:
    """A config.json of the original LLaVA repository: the LLM's keys flat at the top level plus mm_* keys."""
    raw = {
        "_name_or_path": "./checkpoints/llava-tiny",
        "architectures": [ORIGINAL_ARCHITECTURES[llm]],
        "model_type": ORIGINAL_MODEL_TYPES[llm],
        "bos_token_id": text.bos_token_id,
        "eos_token_id": text.eos_token_id,
        "pad_token_id": text.pad_token_id,
        "hidden_act": "silu",
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "initializer_range": 0.02,
        "max_position_embeddings": text.max_position_embeddings,
        "num_attention_heads": text.num_attention_heads,
        "num_hidden_layers": text.num_hidden_layers,
        "num_key_value_heads": text.num_key_value_heads,
        "rms_norm_eps": text.rms_norm_eps,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.31.0",
        "use_cache": True,
        "vocab_size": text.vocab_size,
        "freeze_mm_mlp_adapter": False,
        "image_aspect_ratio": "pad",
        "mm_hidden_size": mm_hidden,
        "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "tokenizer_model_max_length": 2048,
        "tokenizer_padding_side": "right",
        "tune_mm_mlp_adapter": False,
        "use_mm_proj": True,
    }
    if llm == "llama2":
        raw["pretraining_tp"] = 1
    else:
        raw.update(rope_theta=1000000.0, sliding_window=None)
    return raw


def build_llava_original(out: Path, *, llm: str = "llama2", with_tower: bool = True, seed: int = 0) -> Path:
    """A tiny checkpoint in the original LLaVA repository's layout (``LlavaLlamaForCausalLM`` & co.)."""
    torch.manual_seed(seed)
    tok = make_tokenizer(LLM_STYLE[llm])  # no <image> token: the original code inserts index -200
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token  # LLaVA's training code pads Vicuna with <unk>
    if llm == "llama2":
        tok.chat_template = None  # Vicuna-based LLaVA keeps its conversation templates in code
    text = text_config(llm, tok)
    lm = tf.AutoModelForCausalLM.from_config(text).eval()
    vcfg, _ = vision_parts("clip")
    tensors = {k: v.contiguous() for k, v in lm.state_dict().items()}  # model.* and lm_head.*
    projector = torch.nn.Sequential(
        torch.nn.Linear(vcfg.hidden_size, text.hidden_size),
        torch.nn.GELU(),
        torch.nn.Linear(text.hidden_size, text.hidden_size),
    )
    tensors.update({f"model.mm_projector.{k}": v.contiguous() for k, v in projector.state_dict().items()})
    if with_tower:  # LLaVA-1.6 checkpoints carry their fine-tuned tower
        tower = tf.CLIPVisionModel(vcfg)
        tensors.update({f"model.vision_tower.vision_tower.{k}": v.contiguous() for k, v in tower.state_dict().items()})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keys = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    weight_map = {}
    for name, names in shards.items():
        save_file({k: tensors[k] for k in names}, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(original_llava_config(text, llm, vcfg.hidden_size), indent=2) + "\n")
    tf.GenerationConfig(
        bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id, pad_token_id=tok.pad_token_id
    ).save_pretrained(out)
    tok.save_pretrained(out)
    return out
