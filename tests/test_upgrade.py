"""`upgrade` end to end: llava-hf sources x encoders -> reload via Auto classes -> generate."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

import vlm_swap
from vlm_swap.format import SwapVLMForConditionalGeneration, SwapVLMProcessor
from vlm_swap.surgery.layouts import SOURCES

from .helpers import ask, read_tensors

CASES = [
    # (llm family, source tower, encoder kind, encoder source family)
    ("llama2", "clip", "perceiver", "qwen3_vl"),
    ("qwen2", "siglip", "perceiver", "qwen3_vl"),
    ("qwen3", "clip", "perceiver", "qwen2_5_vl"),
    ("llama2", "siglip", "perceiver", "qwen2_5_vl"),
    ("qwen3", "siglip", "hf-vit", "clip"),
    ("llama2", "clip", "hf-vit", "siglip"),
    ("qwen2", "clip", "hf-vit", "siglip2"),
]


def _encoder_spec(kind, fam, perceiver, vit):
    return f"{kind}:{perceiver(fam) if kind == 'perceiver' else vit(fam)}"


@pytest.mark.parametrize("llm,tower,kind,fam", CASES, ids=["-".join(c) for c in CASES])
def test_upgrade_reload_generate(tmp_path, llava, perceiver, vit, images, llm, tower, kind, fam):
    src = llava(llm, tower)
    out = vlm_swap.upgrade(str(src), _encoder_spec(kind, fam, perceiver, vit), tmp_path / "out")

    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert isinstance(model, SwapVLMForConditionalGeneration)
    assert isinstance(processor, SwapVLMProcessor)
    assert not hasattr(model.encoder.model, "lm_head")

    # LLM tensors equal to the source's; rows of added tokens are the mean row.
    src_t, out_t = read_tensors(src), read_tensors(out)
    adapter = SOURCES.get("llava")
    new_vocab = model.config.text_config.vocab_size
    for key, t in src_t.items():
        if adapter.part_of(key) != "llm":
            continue
        got = out_t["language_model." + adapter.llm_key(key)]
        if got.shape == t.shape:
            assert torch.equal(got, t), key
        else:  # embedding / lm_head grown by the added placeholder tokens
            assert got.shape == (new_vocab, t.shape[1])
            assert torch.equal(got[: t.shape[0]], t), key
            assert torch.allclose(got[t.shape[0] :], t.float().mean(0).expand(new_vocab - t.shape[0], -1), atol=1e-6)
    assert not any(k.startswith("language_model.") and "vision" in k for k in out_t)

    # Two images of different sizes in one prompt; placeholders == feature rows; KV-cache generation.
    pics = images[:2]
    text = ask(processor, 2)
    inputs = processor(images=pics, text=text, return_tensors="pt")
    n_placeholders = int(torch.isin(inputs["input_ids"], torch.tensor(model.config.feature_token_ids)).sum())
    with torch.no_grad():
        feats = model.get_image_features(
            **{k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        )
    assert feats.shape == (n_placeholders, model.config.text_config.hidden_size)
    gen = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] == inputs["input_ids"].shape[1] + 4
    with torch.no_grad():
        full = model(**inputs).logits[:, -1]
    assert torch.equal(gen[:, inputs["input_ids"].shape[1]], full.argmax(-1))

    prov = json.loads((out / "vlm_swap.json").read_text())
    assert prov["source_kind"] == "llava" and prov["encoder"].startswith(kind + ":")
    assert prov["versions"]["transformers"]


def test_perceiver_rows_wrap_image_with_boundaries(tmp_path, llava, perceiver, images):
    out = vlm_swap.upgrade(str(llava("llama2", "clip")), f"perceiver:{perceiver('qwen3_vl')}", tmp_path / "o")
    model, processor = vlm_swap.load(out)
    inputs = processor(images=images[:1], text=ask(processor, 1), return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    start, end = model.config.feature_token_ids[0], model.config.feature_token_ids[-1]
    s, e = ids.index(start), ids.index(end)
    n = int(inputs["image_grid_thw"][0].prod()) // 4
    assert e - s - 1 == n and set(ids[s + 1 : e]) == {model.config.image_token_id}
    assert model.config.connector == "mlp2x-relu" and isinstance(model.connector[1], torch.nn.ReLU)


def test_qwen_target_template_is_not_doubled(tmp_path, llava, perceiver, images):
    """A Qwen target's own template wraps images in vision start/end: expansion must not double them."""
    out = vlm_swap.build(str(_qwen_llm(tmp_path)), f"perceiver:{perceiver('qwen3_vl')}", tmp_path / "o")
    model, processor = vlm_swap.load(out)
    text = ask(processor, 1)
    assert text.count("<|vision_start|>") == 1
    inputs = processor(images=images[:1], text=text, return_tensors="pt")
    ids = inputs["input_ids"][0]
    assert int((ids == model.config.feature_token_ids[0]).sum()) == 1
    assert model.generate(**inputs, max_new_tokens=2, do_sample=False).shape[1] == ids.shape[0] + 2


def _qwen_llm(tmp_path):
    from vlm_swap import zoo

    return zoo.build_llm(tmp_path / "qwen3-llm", family="qwen3")


def test_dtype_cast(tmp_path, llava, vit):
    out = vlm_swap.upgrade(str(llava()), f"hf-vit:{vit('clip')}", tmp_path / "o", dtype="bfloat16")
    tensors = read_tensors(out)
    assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.bfloat16}


def test_upgrade_an_upgraded_model_again(tmp_path, llava, perceiver, vit):
    first = vlm_swap.upgrade(str(llava()), f"hf-vit:{vit('siglip')}", tmp_path / "a")
    second = vlm_swap.upgrade(str(first), f"perceiver:{perceiver()}", tmp_path / "b")
    a, b = read_tensors(first), read_tensors(second)
    emb = "language_model.model.embed_tokens.weight"
    assert torch.equal(b[emb][: a[emb].shape[0]], a[emb])
    model, _ = vlm_swap.load(second)
    assert model.config.encoder_kind == "perceiver"
