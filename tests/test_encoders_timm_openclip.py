"""``timm`` and ``open-clip`` encoders: tiny real checkpoints -> upgrade -> reload -> rows, features, generate."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

import vlm_swap
from vlm_swap.backends import ENCODERS
from vlm_swap.errors import VlmSwapError
from vlm_swap.format import SwapVLMForConditionalGeneration, SwapVLMProcessor
from vlm_swap.zoo.vision_libs import build_open_clip, build_timm_vit

from .helpers import ask, read_tensors

BUILDERS = {"timm": build_timm_vit, "open-clip": build_open_clip}
PICKLE_NAMES = {"timm": "pytorch_model.bin", "open-clip": "open_clip_pytorch_model.bin"}


def timm_reference(src, pixel_values):
    """Patch tokens of the penultimate block, computed by timm's own model loaded by timm: [B, N, D]."""
    import timm

    raw = json.loads((src / "config.json").read_text())
    vit = timm.create_model(raw["architecture"], pretrained=False, num_classes=0, **raw["model_args"]).eval()
    timm.models.load_checkpoint(vit, str(src / "model.safetensors"))
    x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(pixel_values))))  # [B, P + prefix, D]
    for block in vit.blocks[:-1]:
        x = block(x)
    assert vit.num_prefix_tokens == 3  # CLS + 2 register tokens
    return x[:, vit.num_prefix_tokens :], timm_transform(raw)


def timm_transform(raw):
    import timm.data

    return timm.data.create_transform(**timm.data.resolve_data_config(pretrained_cfg=raw["pretrained_cfg"]))


def open_clip_reference(src, pixel_values):
    """Patch tokens of the penultimate block, computed by open_clip's own model loaded by open_clip: [B, N, D]."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{src}")
    visual = model.visual.eval()
    x = visual._embeds(pixel_values)  # [B, 1 + P, D]
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    return x[:, 1:], preprocess


REFERENCES = {"timm": timm_reference, "open-clip": open_clip_reference}


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_upgrade_reload_rows_features_generate(tmp_path, llava, images, kind):
    src = BUILDERS[kind](tmp_path / "encoder")
    out = vlm_swap.upgrade(str(llava("llama2", "clip")), f"{kind}:{src}", tmp_path / "out")
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert isinstance(model, SwapVLMForConditionalGeneration) and isinstance(processor, SwapVLMProcessor)
    saved = json.loads((out / "config.json").read_text())
    assert saved["encoder_kind"] == kind
    if kind == "timm":
        assert saved["encoder_config"]["model_type"] == "timm_wrapper"
        assert saved["encoder_config"]["architecture"] == "vit_tiny_patch16_224"
        assert model.encoder.model.__class__.__name__ == "TimmWrapperModel"
    else:
        assert saved.get("encoder_config") is None and model.config.encoder_config is None
        assert saved["encoder_args"]["model_cfg"]["vision_cfg"]["width"] == 32

    # One image of each size, then all of them in one prompt: placeholders == feature rows == image_rows.
    for pics in [[img] for img in images] + [images]:
        inputs = processor(images=pics, text=ask(processor, len(pics)), return_tensors="pt")
        n_placeholders = int(torch.isin(inputs["input_ids"], torch.tensor(model.config.feature_token_ids)).sum())
        with torch.no_grad():
            feats = model.get_image_features(pixel_values=inputs["pixel_values"])  # [R, D_llm]
        rows = [
            ENCODERS.get(kind).runtime.processing.image_rows(inputs, i, model.config.encoder_args)
            for i in range(len(pics))
        ]
        assert feats.shape == (n_placeholders, model.config.text_config.hidden_size)
        assert rows == [16] * len(pics) and sum(rows) == n_placeholders  # 64 px / patch 16 -> 4 x 4 patches

    # Encoder rows equal the library's own tokens at the feature layer, prefix tokens dropped.
    pixel_values = inputs["pixel_values"]  # [3, 3, 64, 64]
    with torch.no_grad():
        got = model.encoder(pixel_values=pixel_values)  # [3 * 16, 32]
        want, transform = REFERENCES[kind](src, pixel_values)  # [3, 16, 32]
    assert got.shape == (3 * 16, 32)
    torch.testing.assert_close(got, want.reshape(-1, 32), atol=1e-5, rtol=0)

    # The transformers image processor reproduces the library's eval transform: same size and normalisation;
    # open_clip's exactly, timm's up to a one-pixel crop offset (torchvision rounds an odd margin up).
    flat = Image.new("RGB", (96, 80), (200, 40, 90))
    ours = processor.image_processor(flat, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(ours, transform(flat), atol=1e-5, rtol=0)
    theirs = torch.stack([transform(img) for img in images])
    assert theirs.shape == pixel_values.shape
    if kind == "open-clip":
        torch.testing.assert_close(pixel_values, theirs, atol=1e-5, rtol=0)
    else:
        assert (theirs - pixel_values).abs().mean() < 0.05

    inputs = processor(images=images[:2], text=ask(processor, 2), return_tensors="pt")
    gen = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert gen.shape[1] == inputs["input_ids"].shape[1] + 2


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_pickle_only_weights_are_refused_unless_allowed(tmp_path, llava, kind):
    src = BUILDERS[kind](tmp_path / "encoder")
    reference = shutil.copytree(src, tmp_path / "reference")
    for f in src.glob("*.safetensors"):
        torch.save(load_file(f), f.with_name(PICKLE_NAMES[kind]))
        f.unlink()
    source = str(llava("llama2", "clip"))
    with pytest.raises(VlmSwapError, match="safetensors") as err:
        vlm_swap.upgrade(source, f"{kind}:{src}", tmp_path / "out")
    assert "\n" not in str(err.value) and PICKLE_NAMES[kind] in str(err.value) and "--allow-pickle" in str(err.value)
    assert not (tmp_path / "out").exists()
    ours = read_tensors(vlm_swap.upgrade(source, f"{kind}:{src}", tmp_path / "out", allow_pickle=True))
    theirs = read_tensors(vlm_swap.upgrade(source, f"{kind}:{reference}", tmp_path / "ref-out"))
    encoder = [k for k in theirs if k.startswith("encoder.")]
    assert encoder and all(torch.equal(ours[k], theirs[k]) for k in encoder)


def test_bad_sources_fail_in_one_line(tmp_path):
    timm_dir = build_timm_vit(tmp_path / "timm")
    cfg = json.loads((timm_dir / "config.json").read_text())
    (timm_dir / "config.json").write_text(json.dumps({**cfg, "architecture": "vit_no_such_model"}))
    with pytest.raises(VlmSwapError, match="unknown timm architecture 'vit_no_such_model'"):
        ENCODERS.get("timm").load(str(timm_dir))
    clip_dir = build_open_clip(tmp_path / "oc")
    (clip_dir / "open_clip_config.json").unlink()
    with pytest.raises(VlmSwapError, match="no open_clip_config.json"):
        ENCODERS.get("open-clip").load(str(clip_dir))
