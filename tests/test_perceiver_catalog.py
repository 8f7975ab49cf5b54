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


def test_token_budgets_follow_the_family_rules():
    rows = {k: inspect_source(k)["tokens_per_image"] for k in ("qwen3-vl-2b", "smolvlm-256m", "llava-onevision-0.5b")}
    # Qwen3-VL at 512 x 512: (512 / 32)^2 + 2 boundaries; SmolVLM: one 512 px tile of 64 + global tag + 2 markers;
    # LLaVA-OneVision: base 27 x 27 + one 27 x 27 view + 27 newline rows, no boundary rows
    assert rows == {"qwen3-vl-2b": 258, "smolvlm-256m": 67, "llava-onevision-0.5b": 1485}


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
