"""Model cards: every output directory (upgrade, train run, merge, export) gets a README.md with its facts."""

from __future__ import annotations

import re
import shutil

import yaml

import vlm_swap
from vlm_swap.card import UNKNOWN
from vlm_swap.export import export
from vlm_swap.train.run import merge, train
from vlm_swap.zoo.world import write_dataset

TINY = [
    f"stages.{s}.{k}={v}" for s in ("align", "lora") for k, v in (("steps", 2), ("batch_size", 2), ("save_steps", 2))
]


def card(directory) -> tuple[dict, str]:
    text = (directory / "README.md").read_text()
    front = re.match(r"\A---\n(.*?)\n---\n", text, re.DOTALL)
    assert front, text[:200]
    return yaml.safe_load(front.group(1)), text


def row(text: str, part: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {part} |"))


def test_upgrade_and_export_cards_carry_source_encoder_connector_and_licences(tmp_path, llava, vit):
    src, enc = tmp_path / "src", tmp_path / "enc"
    shutil.copytree(llava("llama2", "clip"), src)
    shutil.copytree(vit("clip"), enc)
    (src / "README.md").write_text("---\nlicense: llama2\n---\n# a source\n")
    (enc / "README.md").write_text("---\nlicense: apache-2.0\ntags: [clip]\n---\n")
    up = vlm_swap.upgrade(str(src), f"hf-vit:{enc}", tmp_path / "up")
    front, text = card(up)
    assert front["base_model"] == [str(src)] and front["license"] == "other"
    assert "vlm-swap" in front["tags"] and front["pipeline_tag"] == "image-text-to-text"
    assert text.splitlines()[front_len(text)] == "# up"
    assert f"`hf-vit:{enc}`" in row(text, "encoder") and "mlp2x-gelu" in row(text, "connector")
    assert "llama2" in row(text, "LLM family") and "`upgrade`" in text
    assert row(text, "LLM (from the source)").endswith("| llama2 |") and row(
        text, "encoder (from its source)"
    ).endswith("| apache-2.0 |")
    assert "Not trained" in text

    out = export(up, "llava", tmp_path / "llava")
    front, text = card(out)
    assert "export-llava" in front["tags"] and "# llava" in text
    assert "- format: llava" in text and "LlavaForConditionalGeneration" in text
    assert f"`hf-vit:{enc}`" in text and row(text, "encoder (from its source)").endswith("| apache-2.0 |")


def front_len(text: str) -> int:
    """Index of the first line after the front matter and the blank line."""
    return text.splitlines().index("---", 1) + 2


def test_train_run_and_merge_cards_name_recipe_and_data(tmp_path, llava, perceiver):
    up = vlm_swap.upgrade(str(llava("qwen3", "clip")), f"perceiver:{perceiver()}", tmp_path / "up")
    data = write_dataset(tmp_path / "data", 8, seed=3)
    run = train("tiny-cpu", up, data, tmp_path / "run", images=data.parent, overrides=TINY, progress=False)
    for directory in (run, merge(run, tmp_path / "merged")):
        front, text = card(directory)
        assert "- recipe: `tiny-cpu`" in text and f"- data: `{data}`" in text
        assert re.search(r"- final training loss: \d", text)
        assert f"perceiver:{perceiver()}" in row(text, "encoder") and "mlp2x-relu" in row(text, "connector")
        assert row(text, "LLM (from the source)").endswith(f"| {UNKNOWN} |")
        assert front["license"] == "other"
