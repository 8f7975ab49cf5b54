"""Bad input not covered elsewhere: one line naming the cause, exit != 0, no traceback, nothing written.

Faults injected: configs that disagree with their weights (layer count, widths), a context too short
for the image tokens, images with zero or too many pixels, an image path that is a folder, an
unreadable file, a --set value that is not YAML, encoder checkpoints with an unknown type, code
they ship or no image processor, a source without tokenizer files, and dataset images that do not
decode or exceed the pixel budget.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib

import pytest
from typer.testing import CliRunner

import vlm_swap
from vlm_swap.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_clean_failure(result, *fragments, out=None):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    for frag in fragments:
        assert frag in result.output, result.output
    if out is not None:
        assert not out.exists() and not list(out.parent.glob(f".{out.name}.*"))


def edited_source(tmp_path, llava, **text_config):
    """A copy of the tiny llava source whose config.json text_config is changed (weights untouched)."""
    src = tmp_path / "src"
    shutil.copytree(llava(), src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["text_config"].update({k: v(cfg["text_config"][k]) for k, v in text_config.items()})
    (src / "config.json").write_text(json.dumps(cfg))
    return src


@pytest.mark.parametrize(
    "change,fragment",
    [
        ({"num_hidden_layers": lambda n: n - 1}, "does not belong"),
        ({"num_hidden_layers": lambda n: n + 1}, "lacks"),
        ({"hidden_size": lambda n: n // 2}, "has shape"),
        ({"intermediate_size": lambda n: n + 8}, "has shape"),
    ],
    ids=["fewer-layers", "more-layers", "hidden-size", "intermediate-size"],
)
def test_config_weights_mismatch(tmp_path, llava, vit, change, fragment):
    src = edited_source(tmp_path, llava, **change)
    out = tmp_path / "o"
    result = run("upgrade", src, "-e", f"hf-vit:{vit()}", "-o", out)
    assert_clean_failure(result, fragment, "config/weights mismatch", out=out)


def test_context_too_short_for_the_image_tokens(tmp_path, llava, vit):
    src = edited_source(tmp_path, llava, max_position_embeddings=lambda n: 16)
    out = tmp_path / "o"
    assert_clean_failure(run("upgrade", src, "-e", f"hf-vit:{vit()}", "-o", out), "incompatible pair", out=out)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels (no pixel data: the budget check needs none)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory, llava, vit):
    return vlm_swap.upgrade(str(llava()), f"hf-vit:{vit()}", tmp_path_factory.mktemp("val") / "up")


@pytest.mark.parametrize(
    "size,fragment",
    [((0, 32), "not a readable image"), ((9000, 9000), "pixel budget"), ((20000, 20000), "pixel budget")],
    ids=["zero-width", "over-budget", "decompression-bomb"],
)
def test_images_with_zero_or_too_many_pixels(tmp_path, upgraded, size, fragment):
    image = tmp_path / "img.png"
    image.write_bytes(png_header(*size))
    assert_clean_failure(run("generate", upgraded, "--image", image, "--prompt", "hi"), fragment)


def test_image_path_that_is_a_folder_or_unreadable(tmp_path, upgraded):
    assert_clean_failure(run("generate", upgraded, "--image", tmp_path, "--prompt", "hi"), "image not found")
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    locked = tmp_path / "locked.png"
    locked.write_bytes(png_header(8, 8))
    locked.chmod(0)
    assert_clean_failure(run("generate", upgraded, "--image", locked, "--prompt", "hi"), "not a readable image")


def test_override_value_that_is_not_yaml(tmp_path, upgraded):
    data = tmp_path / "d.jsonl"
    data.write_text("")
    result = run("train", "tiny-cpu", "--model", upgraded, "--data", data, "--out", tmp_path / "run", "--set", "a=[")
    assert_clean_failure(result, "--set a", "not valid YAML")
    assert not (tmp_path / "run").exists()


def _unknown_model_type(d):
    (d / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))


def _ships_code(d):
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "auto_map": {"AutoConfig": "configuration_x.XConfig"}}))


def _no_preprocessor(d):
    (d / "preprocessor_config.json").unlink()


@pytest.mark.parametrize(
    "kind,fault,fragment",
    [
        ("hf-vit", _unknown_model_type, "cannot read the config"),
        ("perceiver", _unknown_model_type, "cannot read the config"),
        ("hf-vit", _ships_code, "--trust-remote-code"),
        ("hf-vit", _no_preprocessor, "cannot load the image processor"),
    ],
    ids=["hf-vit-unknown-type", "perceiver-unknown-type", "hf-vit-remote-code", "hf-vit-no-preprocessor"],
)
def test_broken_encoder_checkpoints(tmp_path, llava, vit, kind, fault, fragment):
    enc = tmp_path / "enc"
    shutil.copytree(vit(), enc)
    fault(enc)
    out = tmp_path / "o"
    assert_clean_failure(run("upgrade", llava(), "-e", f"{kind}:{enc}", "-o", out), fragment, out=out)


def test_source_without_tokenizer(tmp_path, llava, vit):
    src = tmp_path / "src"
    shutil.copytree(llava(), src)
    for f in src.glob("tokenizer*"):
        f.unlink()
    out = tmp_path / "o"
    assert_clean_failure(run("upgrade", src, "-e", f"hf-vit:{vit()}", "-o", out), "cannot load the tokenizer", out=out)


def test_dataset_images_that_do_not_decode_or_are_too_big(tmp_path, upgraded):
    images = tmp_path / "images"  # beside the run directory: an output inside an input is refused
    images.mkdir()
    (images / "text.png").write_text("not an image")
    (images / "huge.png").write_bytes(png_header(9000, 9000))
    turns = [{"from": "human", "value": "<image>\nwhat?"}, {"from": "gpt", "value": "red"}]
    rows = [{"image": name, "conversations": turns} for name in ("text.png", "huge.png")]
    data = images / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = tmp_path / "run"
    result = run("train", "tiny-cpu", "--model", upgraded, "--data", data, "--images", images, "--out", run_dir)
    assert_clean_failure(result, "line 1: not a readable image", "line 2: image", "pixel budget")
    assert not run_dir.exists()
