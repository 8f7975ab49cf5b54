"""Catalog perceivers and ViTs: full-size architectures on the meta device, and the pairs recommendation."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from vlm_swap.catalog import CATALOG
from vlm_swap.cli import app
from vlm_swap.inspection import inspect_source
from vlm_swap.listings import pair_table

# Published parameter counts (model cards / safetensors metadata): exact where known, else the rounded figure.
EXACT = {"gemma-3-4b": 4_300_079_472, "clip-vit-l-14-336": 303_507_456, "siglip-so400m-384": 428_225_600}
ROUNDED = {
    "smolvlm-256m": (256e6, 0.5e6),
    "smolvlm-500m": (507e6, 0.5e6),
    "llava-onevision-0.5b": (894e6, 0.5e6),
    "qwen2.5-vl-3b": (3.75e9, 0.005e9),
    "qwen3-vl-2b": (2.13e9, 0.005e9),
}


@pytest.mark.parametrize("entry_id", sorted({**EXACT, **ROUNDED}))
def test_catalog_encoders_build_offline_with_published_counts(entry_id):
    report = inspect_source(entry_id)
    entry = CATALOG.get(entry_id)
    n = report["total_params"]
    if entry_id in EXACT:
        assert n == EXACT[entry_id]
    else:
        target, tol = ROUNDED[entry_id]
        assert abs(n - target) <= tol, n
    assert sum(p["params"] for p in report["parts"].values()) == n
    assert report["feature_dim"] == entry.hidden_size
    if entry.role == "perceiver":
        assert report["parts"]["llm"]["hidden_size"] == entry.hidden_size
        assert report["encoder_params"] == n - report["parts"]["lm_head"]["params"]
    else:
        assert report["parts"]["vision"]["hidden_size"] == entry.hidden_size


def test_catalog_token_budgets_follow_the_family_rules():
    """Each catalog perceiver's rows per image is what its family's (capped) processor gives at 512 x 512."""
    import transformers as tf
    from PIL import Image

    from vlm_swap.format.perceiver import PERCEIVER_FAMILIES

    image = [Image.new("RGB", (512, 512))]
    got = {}
    for entry_id, patch in (("qwen3-vl-2b", 16), ("qwen2.5-vl-3b", 14)):
        proc = tf.Qwen2VLImageProcessor(patch_size=patch, merge_size=2, temporal_patch_size=2)
        fam = PERCEIVER_FAMILIES[CATALOG.get(entry_id).config().model_type]
        fam.cap(None, proc)
        got[entry_id] = fam.image_rows(fam.preprocess(proc, image, {}), 0, {"merge_size": 2, **_ids()})
    for entry_id in ("smolvlm-256m", "smolvlm-500m"):
        cfg = CATALOG.get(entry_id).config()
        proc = tf.Idefics3ImageProcessor(size={"longest_edge": 2048}, max_image_size={"longest_edge": 512})
        PERCEIVER_FAMILIES["idefics3"].cap(cfg, proc)
        seq = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2 // cfg.scale_factor**2
        args = {**_ids(), "image_seq_len": seq, "row_col_ids": [[9] * 6] * 6, "newline_ids": [7], "row_end_ids": [8]}
        fam = PERCEIVER_FAMILIES["idefics3"]
        got[entry_id] = fam.image_rows(fam.preprocess(proc, image, args), 0, args)
    cfg = CATALOG.get("llava-onevision-0.5b").config()
    proc = tf.LlavaOnevisionImageProcessor(size={"height": 384, "width": 384}, image_grid_pinpoints=[[1, 1]])
    fam = PERCEIVER_FAMILIES["llava_onevision"]
    fam.cap(cfg, proc)
    view = cfg.vision_config.image_size
    args = {
        **_ids(),
        "num_image_tokens": (view // cfg.vision_config.patch_size) ** 2,
        "vision_aspect_ratio": cfg.vision_aspect_ratio,
        "select_strategy": cfg.vision_feature_select_strategy,
        "pinpoints": cfg.image_grid_pinpoints,
        "view_size": view,
    }
    got["llava-onevision-0.5b"] = fam.image_rows(fam.preprocess(proc, image, args), 0, args)
    got["gemma-3-4b"] = CATALOG.get("gemma-3-4b").config().mm_tokens_per_image
    assert got == {k: CATALOG.get(k).tokens_per_image for k in got}
    # inspect adds the two boundary rows where the family has them
    assert inspect_source("smolvlm-256m")["tokens_per_image"] == got["smolvlm-256m"] + 2
    assert inspect_source("llava-onevision-0.5b")["tokens_per_image"] == got["llava-onevision-0.5b"]


def _ids() -> dict:
    return {"vision_start_id": 1, "vision_end_id": 2, "image_token_id": 3, "fake_id": 4, "global_id": 5}


def test_pairs_recommend_a_same_family_perceiver_and_say_why():
    rows = pair_table(None, "qwen3-4b")
    picked = [r for r in rows if r["recommended"]]
    assert len(picked) == 1 and CATALOG.get(picked[0]["encoder"]).family == "qwen3"
    assert "same text family (qwen3)" in picked[0]["why"]
    rows = pair_table(None, "vicuna-7b")
    picked = [r for r in rows if r["recommended"]]
    assert len(picked) == 1 and "no perceiver of the llama2 family" in picked[0]["why"]
    assert CATALOG.get(picked[0]["encoder"]).role == "perceiver" and picked[0]["verdict"] != "fail"


def test_pairs_cli_prints_the_recommendation():
    result = CliRunner().invoke(app, ["pairs", "--llm", "qwen3-4b"], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert "recommended perceiver for qwen3-4b: qwen3-vl-" in result.output
