"""`inspect` from full checkpoints and from config-only directories (meta-device build)."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image
from transformers import LlavaForConditionalGeneration

import vlm_swap
from vlm_swap.catalog import CATALOG
from vlm_swap.format import SwapVLMProcessor
from vlm_swap.inspection import inspect_source


def test_inspect_counts_match_the_real_model(llava):
    src = llava("qwen2", "siglip")
    report = inspect_source(str(src))
    model = LlavaForConditionalGeneration.from_pretrained(src)
    assert report["total_params"] == sum(p.numel() for p in model.parameters())
    parts = report["parts"]
    assert parts["encoder"]["params"] == sum(p.numel() for p in model.model.vision_tower.parameters())
    assert parts["connector"]["params"] == sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    assert sum(p["params"] for p in parts.values()) == report["total_params"]
    assert report["image_token"] == "<image>" and report["tokens_per_image"] == 16
    assert report["source_kind"] == "llava" and report["weights"] == "safetensors"


@pytest.mark.parametrize("kind", ["perceiver", "open-clip"])
def test_inspect_of_an_upgraded_model_names_its_encoder_and_rows(tmp_path, llava, perceiver, vision_lib, images, kind):
    """The encoder kind where its config has no model type (open-clip); rows per image from its own processor."""
    encoder = perceiver() if kind == "perceiver" else vision_lib(kind)
    up = vlm_swap.upgrade(str(llava()), f"{kind}:{encoder}", tmp_path / "up")
    report = inspect_source(str(up))
    assert report["source_kind"] == "swap-vlm"
    assert report["parts"]["encoder"]["type"] == ("qwen3_vl" if kind == "perceiver" else "open-clip")
    processor = SwapVLMProcessor.from_pretrained(up)
    text = processor.image_token
    expanded = processor(images=[Image.new("RGB", (512, 512))], text=text, return_tensors="pt")["input_ids"][0]
    rows = len(expanded) - len(processor.tokenizer(text)["input_ids"]) + 1  # the placeholder became `rows` tokens
    assert report["tokens_per_image"] == rows > 1


def test_config_only_dir_gives_the_same_report(tmp_path, llava):
    src = llava()
    only = tmp_path / "cfg"
    only.mkdir()
    shutil.copy(src / "config.json", only / "config.json")
    full, bare = inspect_source(str(src)), inspect_source(str(only))
    assert bare["weights"] == "config only"
    assert bare["total_params"] == full["total_params"]
    assert bare["parts"] == full["parts"]


def test_llava_1_5_7b_config_gives_the_published_count(tmp_path):
    """llava-hf/llava-1.5-7b-hf's architecture, built on the meta device: 7,063,427,072 parameters."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
            projection_dim=768,
        ),
        text_config=LlamaConfig(
            vocab_size=32064,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=4096,
        ),
        image_token_index=32000,
    )
    cfg.architectures = ["LlavaForConditionalGeneration"]
    d = tmp_path / "llava-1.5-7b"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg.to_dict()))
    report = inspect_source(str(d))
    assert report["total_params"] == 7_063_427_072
    assert report["tokens_per_image"] == 576


# Published parameter counts (the checkpoints' safetensors totals; tied embeddings counted once).
PUBLISHED = {
    "llava-1.5-7b-hf": 7_063_427_072,
    "vicuna-7b": 6_738_415_616,
    "llama-3.2-1b": 1_235_814_400,
    "llama-3.2-3b": 3_212_749_824,
    "qwen3-0.6b": 596_049_920,
    "qwen3-4b": 4_022_468_096,
    # source VLMs and target LLMs
    "llava-v1.6-mistral-7b-hf": 7_566_747_648,
    "llava-v1.6-vicuna-7b-hf": 7_063_431_168,
    "vicuna-13b": 13_015_864_320,
    "qwen3-8b": 8_190_735_360,
    "qwen3-14b": 14_768_307_200,
    "qwen3-32b": 32_762_123_264,
}


@pytest.mark.parametrize("model_id,count", sorted(PUBLISHED.items()))
def test_catalog_architectures_give_published_counts_offline(model_id, count):
    report = inspect_source(model_id)
    assert report["total_params"] == count
    assert report["weights"] == "config only"


def test_catalog_facts_agree_with_their_architectures():
    for model_id, entry in CATALOG.items():
        if entry.arch is None:
            continue
        cfg = entry.config()
        text = getattr(cfg, "text_config", cfg)
        assert entry.hidden_size == text.hidden_size, model_id
        if entry.role in ("llm", "vlm"):  # encoders have no context length
            assert entry.context == text.max_position_embeddings, model_id
