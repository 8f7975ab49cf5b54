"""Builders of tiny, real vision checkpoints of the timm and open_clip libraries, built offline.

Each builder creates a model with the library's own factory from a tiny architecture (64 px input,
width 32, 2 blocks), seeds torch so the weights are the same on every run, and saves it in the
layout the library publishes on the hub, with safetensors weights: a timm hub dir (``config.json``
+ ``model.safetensors``, which ``TimmWrapperModel.from_pretrained`` reads) and an open_clip hub dir
(``open_clip_config.json`` + ``open_clip_model.safetensors``). They are fixtures of the tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# timm: architecture + overrides; two register tokens so there are prefix tokens besides CLS
TIMM_VIT = {
    "architecture": "vit_tiny_patch16_224",
    "model_args": {"img_size": 64, "embed_dim": 32, "depth": 2, "num_heads": 2, "reg_tokens": 2},
}
# open_clip: a CLIP model config (head_width 16 -> 2 heads of width 32)
OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 32, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


def build_timm_vit(out: Path, seed: int = 0) -> Path:
    """A tiny timm ViT (CLS + 2 register tokens) saved in timm's hub layout."""
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    model = timm.create_model(TIMM_VIT["architecture"], pretrained=False, num_classes=0, **TIMM_VIT["model_args"])
    out = Path(out)
    config = {"pretrained_cfg": {"tag": "tiny-random"}}
    save_for_hf(model.eval(), str(out), model_config=config, model_args=TIMM_VIT["model_args"], safe_serialization=True)
    # timm >= 1.0.31 also records num_classes in model_args, which TimmWrapperModel passes itself
    cfg = json.loads((out / "config.json").read_text())
    cfg["model_args"].pop("num_classes", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def build_open_clip(out: Path, seed: int = 0) -> Path:
    """A tiny open_clip CLIP (64 px ViT, width 32, 2 layers) saved in open_clip's hub layout."""
    from dataclasses import asdict

    from open_clip.model import CLIP, set_model_preprocess_cfg
    from open_clip.push_to_hf_hub import save_config_for_hf
    from open_clip.transform import PreprocessCfg
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = CLIP(**OPEN_CLIP).eval()
    set_model_preprocess_cfg(model, asdict(PreprocessCfg(size=OPEN_CLIP["vision_cfg"]["image_size"])))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "open_clip_model.safetensors"))
    save_config_for_hf(model, out / "open_clip_config.json", model_config=OPEN_CLIP)
    return out
