"""The saved format: shards, atomic replacement, placeholder/feature mismatch errors, text-only templates."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForImageTextToText

import vlm_swap
from vlm_swap.errors import VlmSwapError

from .helpers import ask, read_tensors


def test_sharded_output_reloads(tmp_path, llava, perceiver):
    out = vlm_swap.upgrade(str(llava()), f"perceiver:{perceiver()}", tmp_path / "o", max_shard_bytes=64 * 1024)
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(read_tensors(out))
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert torch.equal(
        model.language_model.model.embed_tokens.weight, read_tensors(out)["language_model.model.embed_tokens.weight"]
    )


def test_placeholder_feature_mismatch_names_both_counts(tmp_path, llava, vit, images):
    out = vlm_swap.upgrade(str(llava()), f"hf-vit:{vit()}", tmp_path / "o")
    model, processor = vlm_swap.load(out)
    inputs = processor(images=images[:1], text=ask(processor, 1), return_tensors="pt")
    ids = inputs["input_ids"].clone()
    first = int((ids[0] == model.config.image_token_id).nonzero()[0])
    ids[0, first] = processor.tokenizer.pad_token_id  # one placeholder fewer than feature rows
    with pytest.raises(VlmSwapError, match=r"15 placeholder tokens in the prompt, 16 feature rows"):
        model(input_ids=ids, attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"])


def test_more_placeholders_than_images_is_refused(tmp_path, llava, vit, images):
    out = vlm_swap.upgrade(str(llava()), f"hf-vit:{vit()}", tmp_path / "o")
    _, processor = vlm_swap.load(out)
    with pytest.raises(ValueError, match="should be the same as the number of images"):
        processor(images=images[:1], text=ask(processor, 2), return_tensors="pt")


def test_failed_forced_upgrade_keeps_the_previous_output(tmp_path, llava, vit):
    out = vlm_swap.upgrade(str(llava()), f"hf-vit:{vit()}", tmp_path / "o")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    broken = tmp_path / "broken"
    shutil.copytree(vit("siglip"), broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(VlmSwapError):
        vlm_swap.upgrade(str(llava()), f"hf-vit:{broken}", out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(tmp_path.glob(".o.*"))


def test_stale_temporaries_of_dead_processes_are_cleaned(tmp_path, llava, vit):
    stale = tmp_path / ".o.tmp-999999-deadbeef"
    stale.mkdir()
    (stale / "half.safetensors").write_bytes(b"x")
    vlm_swap.upgrade(str(llava()), f"hf-vit:{vit()}", tmp_path / "o")
    assert not stale.exists()


def test_text_only_llm_template_renders_images(tmp_path, bare_llm, vit, images):
    out = vlm_swap.build(str(bare_llm("llama3")), f"hf-vit:{vit('siglip')}", tmp_path / "o")
    model, processor = vlm_swap.load(out)
    assert processor.text_only_template
    text = ask(processor, 1)
    assert text.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<image>\nwhat color")
    inputs = processor(images=images[:1], text=text, return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 16
    assert processor.tokenizer.pad_token_id != processor.tokenizer.eos_token_id
    model.generate(**inputs, max_new_tokens=2, do_sample=False)
