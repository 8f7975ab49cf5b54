"""Each private dependency API vlm-swap uses (``vlm_swap.format.compat``), checked on tiny real objects: a release that
changes one fails here, loudly, before it breaks an upgrade, a training run or an export.

Wrappers are called and their results checked. Methods vlm-swap overrides (which cannot go through a wrapper)
have their existence, signature and use by the dependency pinned.
"""

from __future__ import annotations

import errno
import inspect
import json
import math
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralModel,
    ProcessorMixin,
    TimmWrapperModel,
    Trainer,
    TrainingArguments,
)
from transformers.generation.utils import GenerationMixin

import vlm_swap
from vlm_swap.backends.streaming import meta_module
from vlm_swap.backends.timm_vit import timm_config
from vlm_swap.format import SwapVLMProcessor, compat
from vlm_swap.format.compat import hf_auto_dtype, hf_checkpoint_keys


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def _tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory, llava, vit):
    return vlm_swap.upgrade(str(llava()), f"hf-vit:{vit()}", tmp_path_factory.mktemp("compat") / "up")


# ---- transformers: loading rules --------------------------------------------------------------------------


def test_checkpoint_keys_follow_the_renamings_and_refuse_conversions(perceiver):
    from transformers import AutoConfig, AutoModel

    from vlm_swap.checkpoints.tensors import read_safetensors_header

    # LLaVA-OneVision checkpoints keep the legacy layout (language_model.model.*): renamed, the prefix handled.
    path = perceiver("llava_onevision")
    model = meta_module(lambda: AutoModel.from_config(AutoConfig.from_pretrained(path)))
    keys = list(read_safetensors_header(path / "model.safetensors"))
    found = hf_checkpoint_keys(model, [*keys, "not.a.weight"])
    assert found["language_model.embed_tokens.weight"] == "language_model.model.embed_tokens.weight"
    assert found["vision_tower.post_layernorm.weight"] == "vision_tower.post_layernorm.weight"
    assert set(found) == set(model.state_dict()) and "not.a.weight" not in found.values()

    # Mixtral's per-expert weights are fused on load (a WeightConverter): not a renaming, so None.
    cfg = MixtralConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, num_local_experts=2,
    )  # fmt: skip
    moe = meta_module(lambda: MixtralModel(cfg))
    experts = [f"layers.0.block_sparse_moe.experts.{i}.w{j}.weight" for i in range(2) for j in (1, 2, 3)]
    assert hf_checkpoint_keys(moe, ["embed_tokens.weight"]) == {"embed_tokens.weight": "embed_tokens.weight"}
    assert hf_checkpoint_keys(moe, ["embed_tokens.weight", *experts]) is None


def test_auto_dtype_is_the_one_from_pretrained_gives_a_config_without_dtype(tmp_path, vision_lib):
    """timm configs carry no dtype: from_pretrained(dtype="auto") takes the first floating tensor's."""
    enc = tmp_path / "timm-bf16"
    shutil.copytree(vision_lib("timm"), enc)
    tensors = load_file(enc / "model.safetensors")
    save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, enc / "model.safetensors")
    raw = json.loads((enc / "config.json").read_text())
    config = timm_config(raw, str(enc))
    assert config.dtype is None
    hf_auto_dtype(config, [enc / "model.safetensors"], None)
    loaded = TimmWrapperModel.from_pretrained(enc, config=timm_config(raw, str(enc)), dtype="auto")
    assert config.dtype == loaded.config.dtype == torch.bfloat16


def test_architecture_names_come_from_the_auto_mappings():
    assert compat.hf_architecture("llm", "llama") == "LlamaForCausalLM"
    assert compat.hf_architecture("vit", "siglip_vision_model") == "SiglipVisionModel"
    assert compat.hf_architecture("image-text-to-text", "qwen3_vl") == "Qwen3VLForConditionalGeneration"
    with pytest.raises(KeyError):
        compat.hf_architecture("llm", "not-a-model-type")


def test_no_weight_init_leaves_tensors_as_they_are_and_restores_init():
    t = torch.zeros(4, 4)
    with compat.no_weight_init():
        torch.nn.init.normal_(t)
        torch.nn.init.kaiming_uniform_(t)
    assert not t.any()
    torch.nn.init.normal_(t)  # restored after the block
    assert t.any()


def test_loaded_from_is_the_directory_the_model_was_read_from(upgraded):
    model, _ = vlm_swap.load(upgraded)
    assert compat.loaded_from(model) == upgraded.resolve()
    assert (compat.loaded_from(model) / "config.json").is_file()


def test_llava_onevision_features_are_the_processors_own_count(perceiver):
    processor = AutoProcessor.from_pretrained(perceiver("llava_onevision"))
    token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    size = processor.image_processor.size
    for width, height in ((300, 200), (64, 64), (120, 500)):
        ids = processor(images=[Image.new("RGB", (width, height))], text=processor.image_token)["input_ids"]
        n = compat.llava_onevision_features(
            height,
            width,
            size["height"],
            size["width"],
            pinpoints=processor.image_processor.image_grid_pinpoints,
            num_image_tokens=processor.num_image_tokens,
            vision_aspect_ratio=processor.vision_aspect_ratio,
        )
        n -= 1 if processor.vision_feature_select_strategy == "default" else 0
        assert n == sum(i == token for i in ids[0]) > 1


# ---- transformers: hooks vlm-swap's model and processor override -----------------------------------------


def test_generate_validates_kwargs_through_the_overridden_hook():
    assert _params(GenerationMixin._validate_model_kwargs) == ["self", "model_kwargs"]
    model = _tiny_llama()
    with pytest.raises(ValueError, match="bogus"):
        model._validate_model_kwargs({"bogus": 1})
    seen, hook = [], model._validate_model_kwargs
    model._validate_model_kwargs = lambda kwargs: (seen.append(set(kwargs)), hook(kwargs))[1]
    ids = torch.tensor([[2, 5, 6]])
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False)
    assert seen and "attention_mask" in seen[0]


def test_processor_call_expands_images_through_the_overridden_hook(upgraded):
    assert _params(ProcessorMixin._process_images) == ["self", "images", "kwargs"]
    processor = SwapVLMProcessor.from_pretrained(upgraded)
    seen, hook = [], processor._process_images
    processor._process_images = lambda images, **kwargs: (seen.append("called"), hook(images, **kwargs))[1]
    ids = processor(images=[Image.new("RGB", (40, 30))], text=processor.image_token, return_tensors="pt")["input_ids"]
    rows = int((ids == processor.image_token_id).sum())
    assert seen == ["called"] and rows > 1


def test_no_split_modules_of_the_parts_reach_the_model(upgraded):
    model = AutoModelForImageTextToText.from_pretrained(upgraded)
    assert "LlamaDecoderLayer" in LlamaForCausalLM._no_split_modules
    assert set(model.language_model._no_split_modules) <= set(model._no_split_modules)
    assert set(model.encoder.model._no_split_modules) <= set(model._no_split_modules)


# ---- transformers' Trainer --------------------------------------------------------------------------------


def _trainer(tmp_path, cls=Trainer, **kwargs) -> Trainer:
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), save_only_model=True, use_cpu=True, report_to="none", **kwargs
    )
    return cls(model=_tiny_llama(), args=args)


def test_checkpoints_are_written_under_the_redirected_directory(tmp_path):
    assert _params(Trainer._save_checkpoint) == ["self", "model", "trial"]
    assert _params(Trainer._get_output_dir) == ["self", "trial"]
    trainer = _trainer(tmp_path)
    assert compat.trainer_output_dir(trainer) == tmp_path / "out"
    with compat.checkpoints_written_under(trainer, tmp_path / "staging"):
        trainer._save_checkpoint(trainer.model, None)
    written = tmp_path / "staging" / "checkpoint-0"
    assert (written / "model.safetensors").is_file() and (written / "trainer_state.json").is_file()
    assert compat.trainer_output_dir(trainer) == tmp_path / "out"  # restored after the block
    assert not (tmp_path / "out" / "checkpoint-0").exists()


def test_rotation_keeps_the_newest_by_step_and_the_best(tmp_path):
    for step in (1, 2, 3, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
    compat.rotate_checkpoints(tmp_path, None, None)  # no limit: all kept
    assert len(list(tmp_path.iterdir())) == 4
    compat.rotate_checkpoints(tmp_path, 3, str(tmp_path / "checkpoint-1"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "checkpoint-10", "checkpoint-3"]
    compat.rotate_checkpoints(tmp_path, 1, None)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-10"]


def test_the_train_dataloader_takes_its_sampler_from_the_overridden_hook(tmp_path):
    assert _params(Trainer._get_train_sampler) == ["self", "train_dataset"]
    seen = []

    class Hooked(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            seen.append(train_dataset)
            return torch.utils.data.SequentialSampler(train_dataset)

    data = [{"input_ids": torch.tensor([2, 5]), "labels": torch.tensor([2, 5])}] * 3
    trainer = _trainer(tmp_path, Hooked)
    trainer.train_dataset = data
    trainer.get_train_dataloader()
    assert seen == [data]


# ---- accelerate and DeepSpeed -----------------------------------------------------------------------------


def test_fsdp_state_is_kept_on_cpu_processes(monkeypatch):
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    accelerator = Accelerator()
    state = accelerator.state
    assert not compat.keep_fsdp_on_cpu(accelerator)  # no FSDP config launched
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    before = state.distributed_type, getattr(state, "fsdp_plugin", None)
    state.distributed_type = DistributedType.MULTI_CPU  # what accelerate makes of an FSDP launch on CPU processes
    try:
        assert compat.keep_fsdp_on_cpu(accelerator)
        assert state.distributed_type == DistributedType.FSDP
        assert isinstance(state.fsdp_plugin, FullyShardedDataParallelPlugin)
    finally:
        state.distributed_type, state.fsdp_plugin = before


def test_deepspeed_links_fp32_masters_through_hp_mapping():
    assert not compat.deepspeed_zero_mapped(torch.nn.Parameter(torch.zeros(2)))
    pytest.importorskip("deepspeed")
    from deepspeed.utils import mixed_precision_linkage, safe_get_full_fp32_param

    assert "_hp_mapping" in inspect.getsource(mixed_precision_linkage.link_hp_params)
    assert _params(safe_get_full_fp32_param) == ["param"]


# ---- torch ------------------------------------------------------------------------------------------------


def test_tensor_norms_are_the_2_norms():
    tensors = [torch.ones(3), torch.full((2, 2), 2.0), torch.tensor([1.0, math.inf]), torch.tensor([math.nan])]
    norms = compat.tensor_norms(tensors)
    assert [n.shape for n in norms] == [torch.Size([])] * 4
    assert torch.allclose(torch.stack(norms[:2]), torch.tensor([math.sqrt(3), 4.0]))
    assert norms[2].isinf() and norms[3].isnan()


def test_empty_shared_is_a_shared_tensor_of_the_shape_and_dtype():
    like = torch.zeros(2, 3, dtype=torch.bfloat16)
    out = compat.empty_shared(like, (5, 3))
    assert out.shape == (5, 3) and out.dtype == torch.bfloat16 and out.is_shared() and not like.is_shared()
    torch.cat([torch.ones(2, 3, dtype=torch.bfloat16), torch.full((3, 3), 2.0, dtype=torch.bfloat16)], out=out)
    assert out[:2].eq(1).all() and out[2:].eq(2).all()


def test_pickle_tensors_load_memory_mapped_or_whole(tmp_path):
    tensors = {"w": torch.arange(6.0).reshape(2, 3)}
    torch.save(tensors, tmp_path / "zip.pt")
    torch.save(tensors, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(RuntimeError, match="mmap"):  # torch's refusal, which the wrapper recognises
        torch.load(tmp_path / "legacy.pt", weights_only=True, mmap=True)
    for name in ("zip.pt", "legacy.pt"):
        assert torch.equal(compat.torch_load_tensors(tmp_path / name)["w"], tensors["w"])
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(RuntimeError):  # any other error stays an error
        compat.torch_load_tensors(tmp_path / "bad.pt")


# ---- open_clip and safetensors ----------------------------------------------------------------------------


def test_open_clip_builds_its_vision_tower():
    pytest.importorskip("open_clip")
    from open_clip.transformer import VisionTransformer

    from vlm_swap.zoo.vision_libs import OPEN_CLIP

    tower = compat.open_clip_vision_tower(OPEN_CLIP["embed_dim"], OPEN_CLIP["vision_cfg"])
    assert isinstance(tower, VisionTransformer)
    size = OPEN_CLIP["vision_cfg"]["image_size"]
    assert tower(torch.zeros(1, 3, size, size)).shape == (1, OPEN_CLIP["embed_dim"])


def test_safetensors_errors_give_the_os_error_they_wrap(tmp_path):
    from safetensors import SafetensorError

    with pytest.raises(SafetensorError) as failed:
        save_file({"a": torch.zeros(2)}, str(tmp_path / "missing" / "x.safetensors"))
    assert compat.safetensors_errno(failed.value) == errno.ENOENT
    assert compat.safetensors_errno(ValueError("os error 2")) is None  # only safetensors' own errors are read
