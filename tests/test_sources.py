"""Source layouts (llava, llava-next, llava-original, qwen2.5-vl): detect, upgrade, reload, generate, errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    LlamaConfig,
    LlavaConfig,
    MistralConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2ForCausalLM,
)
from typer.testing import CliRunner

import vlm_swap
from vlm_swap.cli import app
from vlm_swap.errors import VlmSwapError
from vlm_swap.format import SwapVLMForConditionalGeneration
from vlm_swap.inspection import inspect_source
from vlm_swap.surgery.layouts import SOURCES
from vlm_swap.surgery.source import open_source

from .helpers import ask, read_tensors

SOURCE_IDS = ["llava", "llava-next", "llava-original", "qwen2.5-vl"]
# a perceiver and a ViT of every kind, on every source
ENCODERS = {"perceiver": "qwen3_vl", "hf-vit": "clip", "timm": "timm", "open-clip": "open-clip"}


@pytest.fixture(scope="module")
def sources(llava, llava_next, llava_original, perceiver):
    """source id -> the tiny checkpoint of that layout."""
    return {
        "llava": lambda: llava("llama2", "clip"),
        "llava-next": lambda: llava_next("mistral"),
        "llava-original": lambda: llava_original("llama2"),
        "qwen2.5-vl": lambda: perceiver("qwen2_5_vl"),
    }


@pytest.mark.parametrize("kind", list(ENCODERS))
@pytest.mark.parametrize("source_id", SOURCE_IDS)
def test_upgrade_each_source(tmp_path, sources, perceiver, vit, vision_lib, images, source_id, kind):
    src = sources[source_id]()
    builder = {"perceiver": perceiver, "hf-vit": vit}.get(kind, vision_lib)
    encoder = builder(ENCODERS[kind])
    assert open_source(str(src), weights=False).layout.id == source_id
    out = vlm_swap.upgrade(str(src), f"{kind}:{encoder}", tmp_path / "out")

    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert isinstance(model, SwapVLMForConditionalGeneration)

    # Every LLM tensor of the source is in the output, bit-identical (rows of added tokens appended).
    adapter = SOURCES.get(source_id)
    src_t, out_t = read_tensors(src), read_tensors(out)
    llm_keys = {k: "language_model." + adapter.llm_key(k) for k in src_t if adapter.part_of(k) == "llm"}
    assert set(llm_keys.values()) == {k for k in out_t if k.startswith("language_model.")}
    for key, out_key in llm_keys.items():
        got, want = out_t[out_key], src_t[key]
        assert torch.equal(got[: want.shape[0]], want), key
        assert got.shape == want.shape or got.shape == (model.config.text_config.vocab_size, *want.shape[1:])

    # The old encoder and connector (projector, merger, image_newline) are gone.
    old = [k for k in src_t if adapter.part_of(k) in ("encoder", "connector")]
    assert old, "the tiny source has vision weights"
    assert all(k.split(".")[0] in ("language_model", "encoder", "connector") for k in out_t)
    new_vision = [t for k, t in out_t.items() if not k.startswith("language_model.")]
    for key in (k for k in old if src_t[k].unique().numel() > 1):  # constant inits (zero biases) aside
        assert not any(t.shape == src_t[key].shape and torch.equal(t, src_t[key]) for t in new_vision), key

    # An image prompt: placeholders match the feature rows, greedy generation agrees with the forward pass.
    inputs = processor(images=images[:1], text=ask(processor, 1), return_tensors="pt")
    gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] == inputs["input_ids"].shape[1] + 3
    with torch.no_grad():
        last = model(**inputs).logits[:, -1]
    assert torch.equal(gen[:, inputs["input_ids"].shape[1]], last.argmax(-1))
    prov = json.loads((out / "vlm_swap.json").read_text())
    assert prov["source_kind"] == source_id


def test_qwen25vl_llm_is_a_plain_qwen2_with_the_source_text_logits(tmp_path, perceiver, vit):
    """On text alone the Qwen2.5-VL's mrope equals 1-D rope: the kept Qwen2ForCausalLM gives the same logits."""
    src = perceiver("qwen2_5_vl")
    out = vlm_swap.upgrade(str(src), f"hf-vit:{vit('clip')}", tmp_path / "out")
    vlm = Qwen2_5_VLForConditionalGeneration.from_pretrained(src).eval()
    model, processor = vlm_swap.load(out)
    assert type(model.language_model) is Qwen2ForCausalLM
    llm = AutoModelForCausalLM.from_config(model.config.text_config)
    assert isinstance(llm, Qwen2ForCausalLM)
    ids = processor.tokenizer("the red circle is left of the blue square.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = vlm(input_ids=ids).logits
        got = model(input_ids=ids).logits
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`rope_scaling` is deprecated:FutureWarning")  # AutoConfig's misreading
@pytest.mark.parametrize("llm,config_cls", [("llama2", LlamaConfig), ("mistral", MistralConfig)])
def test_llava_original_config_is_read_from_the_raw_file(llava_original, llm, config_cls):
    src = llava_original(llm)
    raw = json.loads((src / "config.json").read_text())
    assert "text_config" not in raw and raw["mm_projector_type"] == "mlp2x_gelu"
    if raw["model_type"] == "llava":  # what AutoConfig makes of it: a llava-hf config with a default LLM
        assert isinstance(AutoConfig.from_pretrained(src), LlavaConfig)
    opened = open_source(str(src))
    assert opened.layout.id == "llava-original"
    text = opened.text_config
    assert type(text) is config_cls
    assert (text.hidden_size, text.num_hidden_layers, text.vocab_size) == (
        raw["hidden_size"],
        raw["num_hidden_layers"],
        raw["vocab_size"],
    )
    assert not [k for k in text.to_dict() if k.startswith(("mm_", "image_", "tune_mm"))]
    report = inspect_source(str(src))
    tensors = read_tensors(src)
    assert report["source_kind"] == "llava-original"
    assert report["parts"]["connector"]["params"] == sum(
        t.numel() for k, t in tensors.items() if k.startswith("model.mm_projector.")
    )
    assert report["parts"]["encoder"]["type"] == "openai/clip-vit-large-patch14-336"
    assert report["total_params"] == sum(t.numel() for t in tensors.values())


def _rewrite(src, dst, keep):
    """A copy of checkpoint ``src`` whose weights are only the keys ``keep`` accepts (one shard)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    tensors = {k: t for k, t in read_tensors(src).items() if keep(k)}
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize(
    "keep,message",
    [
        (lambda k: not k.startswith("model.mm_projector."), "no connector weights (model.mm_projector.*"),
        (lambda k: not k.startswith(("model.layers.", "model.embed", "model.norm", "lm_head")), "no llm weights"),
        (lambda k: not k.startswith("model.layers.1."), "the source lacks 9 LLM weights"),
    ],
    ids=["no-projector", "no-llm", "missing-layer"],
)
def test_incomplete_llava_original_fails_in_one_line(tmp_path, llava_original, vit, keep, message):
    src = _rewrite(llava_original("llama2"), tmp_path / "broken", keep)
    with pytest.raises(VlmSwapError) as err:
        vlm_swap.upgrade(str(src), f"hf-vit:{vit('clip')}", tmp_path / "out")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_list_sources_json_and_inspect_name_the_source(sources):
    result = CliRunner().invoke(app, ["list", "sources", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert set(SOURCE_IDS) <= set(listed)
    assert "LlavaLlamaForCausalLM" in listed["llava-original"]["architectures"]
    for source_id in ("llava-next", "qwen2.5-vl"):
        result = CliRunner().invoke(app, ["inspect", str(sources[source_id]())])
        assert result.exit_code == 0, result.output
        assert f"({source_id})" in result.output
        assert inspect_source(str(sources[source_id]()))["source_kind"] == source_id


# Published config.json files (config only): Qwen/Qwen2.5-VL-7B-Instruct in its hub format and liuhaotian/llava-v1.5-7b.
QWEN25_VL_7B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "max_position_embeddings": 128000,
    "max_window_layers": 28,
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "use_sliding_window": False,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 152064,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vision_config": {
        "depth": 32,
        "hidden_act": "silu",
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "temporal_patch_size": 2,
    },
}
LLAVA_V15_7B = {
    "_name_or_path": "./checkpoints/vicuna-7b-v1-5",
    "architectures": ["LlavaLlamaForCausalLM"],
    "model_type": "llava",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "freeze_mm_mlp_adapter": False,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "image_aspect_ratio": "pad",
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_length": 4096,
    "max_position_embeddings": 4096,
    "mm_hidden_size": 1024,
    "mm_projector_type": "mlp2x_gelu",
    "mm_use_im_patch_token": False,
    "mm_use_im_start_end": False,
    "mm_vision_select_feature": "patch",
    "mm_vision_select_layer": -2,
    "mm_vision_tower": "openai/clip-vit-large-patch14-336",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.31.0",
    "tune_mm_mlp_adapter": False,
    "use_cache": True,
    "use_mm_proj": True,
    "vocab_size": 32000,
}


@pytest.mark.parametrize(
    "raw,source_id,text_cls,llm_params,total",
    [
        # Qwen2.5-VL-7B-Instruct: 8,292,166,656 in all; its LLM is Qwen2.5-7B's 7,615,616,512
        (QWEN25_VL_7B, "qwen2.5-vl", "Qwen2Config", 7_615_616_512, 8_292_166_656),
        # LLaVA-1.5-7B (original layout): the LLM is Vicuna-7B's 6,738,415,616; tower and projector not in the config
        (LLAVA_V15_7B, "llava-original", "LlamaConfig", 6_738_415_616, 6_738_415_616),
    ],
    ids=["qwen2.5-vl-7b", "llava-v1.5-7b"],
)
def test_published_configs_give_the_published_llm(tmp_path, raw, source_id, text_cls, llm_params, total):
    (tmp_path / "config.json").write_text(json.dumps(raw))
    report = inspect_source(str(tmp_path))
    assert report["source_kind"] == source_id
    assert (report["parts"]["llm"]["params"], report["total_params"]) == (llm_params, total)
    text = open_source(str(tmp_path), weights=False).text_config
    assert type(text).__name__ == text_cls
    assert "mrope_section" not in json.dumps(text.to_dict()) and "mm_vision_tower" not in text.to_dict()
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(text)
    assert sum(p.numel() for p in llm.parameters()) == llm_params


def test_build_refuses_an_original_llava_checkpoint(tmp_path, llava_original, vit):
    """Its config looks like a bare Llama once read, but it is a VLM: `build` says so in one line."""
    refusal = "is a VLM \\(LlavaLlamaForCausalLM\\), not a bare LLM; use `vlm-swap upgrade`"
    with pytest.raises(VlmSwapError, match=refusal):
        vlm_swap.build(str(llava_original("llama2")), f"hf-vit:{vit('clip')}", tmp_path / "out")
