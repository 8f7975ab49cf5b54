"""Encoders copied from their own checkpoint files at upgrade, never loaded: the output is what a whole load wrote.

The reference is the encoder loaded whole (``load(stream=False)``: ``from_pretrained`` / ``load_state_dict``),
cast with ``module.to(dtype)``, its state dict: what ``upgrade`` wrote before. The streamed upgrade must give the
same keys, dtypes and bytes, and the same config, arguments and facts, for every kind and perceiver family.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import vlm_swap
from vlm_swap.backends import ENCODERS
from vlm_swap.backends.base import LoadOptions
from vlm_swap.errors import VlmSwapError
from vlm_swap.zoo.perceivers import PERCEIVER_BUILD_FAMILIES

from .helpers import read_tensors

CASES = [
    *(("perceiver", family) for family in PERCEIVER_BUILD_FAMILIES),
    *(("hf-vit", tower) for tower in ("clip", "siglip", "siglip2")),
    ("timm", "timm"),
    ("open-clip", "open-clip"),
]


@pytest.fixture(scope="module")
def encoder_dir(perceiver, vit, vision_lib):
    return lambda kind, variant: {"perceiver": perceiver, "hf-vit": vit}.get(kind, vision_lib)(variant)


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def load(kind: str, path, stream: bool):
    return ENCODERS.get(kind).load(str(path), LoadOptions(stream=stream))


@pytest.mark.parametrize("kind,variant", CASES, ids=[v for _, v in CASES])
def test_a_streamed_encoder_is_written_as_loading_it_whole_wrote_it(tmp_path, llava, encoder_dir, kind, variant):
    enc = encoder_dir(kind, variant)
    whole, streamed = load(kind, enc, stream=False), load(kind, enc, stream=True)

    # Built, not loaded: no weight in memory; the same config, arguments and facts as the whole load.
    assert streamed.weights is not None and all(t.is_meta for t in streamed.module.state_dict().values())
    assert set(streamed.weights) == set(whole.module.state_dict())
    as_json = [e.config.to_json_string() if e.config is not None else None for e in (streamed, whole)]
    assert as_json[0] == as_json[1]
    assert streamed.module.args == whole.module.args and streamed.info == whole.info
    assert streamed.module.feature_dim == whole.module.feature_dim

    # The output's encoder tensors, byte for byte: copied (--dtype auto: the tiny LLM and encoders are float32)
    # and cast (bfloat16).
    for dtype in ("auto", "bfloat16"):
        out = vlm_swap.upgrade(str(llava()), f"{kind}:{enc}", tmp_path / dtype, dtype=dtype)
        target = getattr(torch, json.loads((out / "config.json").read_text())["dtype"])
        assert target == (torch.float32 if dtype == "auto" else torch.bfloat16)
        want = {f"encoder.{k}": v for k, v in whole.module.to(target).state_dict().items()}
        got = {k: v for k, v in read_tensors(out).items() if k.startswith("encoder.")}
        assert got.keys() == want.keys()
        for key, w in want.items():
            g = got[key]
            assert (g.dtype, g.shape) == (w.dtype, w.shape) and torch.equal(as_bytes(g), as_bytes(w)), key


def test_a_checkpoint_that_lacks_a_weight_is_loaded_whole_as_before(tmp_path, vit):
    """Loading initialises a weight the checkpoint lacks; only the whole load does that, so it is used."""
    enc = tmp_path / "enc"
    shutil.copytree(vit(), enc)
    tensors = load_file(enc / "model.safetensors")
    del tensors["vision_model.post_layernorm.weight"]
    save_file(tensors, enc / "model.safetensors", metadata={"format": "pt"})
    loaded = load("hf-vit", enc, stream=True)
    assert loaded.weights is None and not any(t.is_meta for t in loaded.module.state_dict().values())


def test_weights_of_another_shape_than_the_config_fail_in_one_line_naming_the_weight(tmp_path, llava, vit):
    enc = tmp_path / "enc"
    shutil.copytree(vit("siglip"), enc)
    cfg = json.loads((enc / "config.json").read_text())
    cfg["intermediate_size"] += 8
    (enc / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "o"
    with pytest.raises(VlmSwapError, match=r"weight 'encoder\.layers\.0\.mlp\.fc1\.weight' has shape .* mismatch"):
        vlm_swap.upgrade(str(llava()), f"hf-vit:{enc}", out)
    assert not out.exists()
