"""`export`: native llava-hf and remote-code checkpoints load without vlm_swap and give the same logits.

The loading side runs in a subprocess where ``import vlm_swap`` fails for real (a meta-path finder
refuses it and sys.path entries holding a vlm_swap package are removed), so only plain
transformers (and the exported code) can be used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

import vlm_swap
from vlm_swap.errors import VlmSwapError
from vlm_swap.export import export

from .helpers import ask, read_tensors

FORMAT = Path(vlm_swap.__file__).parent / "format"

BLOCK_VLM_SWAP = textwrap.dedent(
    """
    import importlib.abc, os, sys
    sys.path[:] = [p for p in sys.path if not os.path.isfile(os.path.join(p or ".", "vlm_swap", "__init__.py"))]

    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "vlm_swap" or name.startswith("vlm_swap."):
                raise ImportError("vlm_swap is blocked in this process")
            return None

    sys.meta_path.insert(0, _Block())
    try:
        import vlm_swap  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("vlm_swap is importable")
    """
)

LOAD_AND_RUN = textwrap.dedent(
    """
    import json, sys, torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging
    logging.set_verbosity_error()

    jobs = json.loads(sys.argv[1])
    for job in jobs:
        remote = job["remote"]
        model = AutoModelForImageTextToText.from_pretrained(job["dir"], trust_remote_code=remote).eval()
        processor = AutoProcessor.from_pretrained(job["dir"], trust_remote_code=remote)
        assert "vlm_swap" not in sys.modules
        inputs = load_file(job["inputs"])
        with torch.no_grad():
            logits = model(**inputs).logits
        image = __import__("PIL.Image").Image.open(job["image"])
        own = processor(images=[image], text=job["text"], return_tensors="pt")
        gen = model.generate(**own, max_new_tokens=3, do_sample=False)
        save_file(
            {"logits": logits.contiguous(), "input_ids": own["input_ids"].contiguous(), "gen": gen.contiguous()},
            job["result"],
        )
        print(json.dumps({"class": type(model).__name__, "processor": type(processor).__name__}))
    """
)


def run_without_vlm_swap(jobs: list[dict]) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_VLM_SWAP + LOAD_AND_RUN, json.dumps(jobs)],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def make_job(tmp_path, name, model_dir, export_dir, remote, image):
    """Reference logits from the SwapVLM in this process, on inputs the exported model gets too."""
    model, processor = vlm_swap.load(model_dir)
    text = ask(processor, 1)
    inputs = dict(processor(images=[image], text=text, return_tensors="pt"))
    with torch.no_grad():
        ref = model(**inputs).logits
    image_path = tmp_path / f"{name}.png"
    image.save(image_path)
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(tmp_path / f"{name}-inputs.safetensors"))
    job = {
        "dir": str(export_dir),
        "remote": remote,
        "inputs": str(tmp_path / f"{name}-inputs.safetensors"),
        "result": str(tmp_path / f"{name}-result.safetensors"),
        "image": str(image_path),
        "text": text,
    }
    return job, ref, inputs["input_ids"]


LLAVA_CASES = [("llama2", "clip", "clip", "mlp2x-gelu"), ("qwen3", "clip", "siglip", "linear")]


def test_export_llava_and_remote_code_load_without_vlm_swap(tmp_path, llava, vit, perceiver, images):
    jobs, refs = [], []
    for llm, tower, kind, connector in LLAVA_CASES:
        up = vlm_swap.upgrade(
            str(llava(llm, tower)), f"hf-vit:{vit(kind)}", tmp_path / f"up-{kind}", connector=connector
        )
        out = export(up, "llava", tmp_path / f"llava-{kind}")
        job, ref, ids = make_job(tmp_path, kind, up, out, False, images[0])
        jobs.append(job)
        refs.append((ref, ids, "LlavaForConditionalGeneration", "LlavaProcessor"))
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["vision_feature_select_strategy"] == ("default" if kind == "clip" else "full")
        assert cfg["projector_hidden_act"] == {"mlp2x-gelu": "gelu", "linear": "linear"}[connector]
        assert set(read_tensors(out)) >= {
            "model.multi_modal_projector.linear_2.weight",
            "model.vision_tower." + ("embeddings.patch_embedding.weight"),
        }

    # remote code: a perceiver, and SigLIP2 NaFlex (which --format llava refuses)
    families = ("qwen3_vl", "idefics3", "llava_onevision", "gemma3")  # every perceiver family
    specs = [(f"perc-{f}", f"perceiver:{perceiver(f)}") for f in families] + [("siglip2", f"hf-vit:{vit('siglip2')}")]
    for name, spec in specs:
        up = vlm_swap.upgrade(str(llava("llama2", "clip")), spec, tmp_path / f"up-{name}")
        out = export(up, "remote-code", tmp_path / f"rc-{name}")
        assert not any("vlm_swap" in line for line in (out / "modeling_swap_vlm.py").read_text().splitlines()[1:])
        shipped = {p.name: p.read_bytes() for p in out.glob("*.py")}
        assert shipped == {p.name: p.read_bytes() for p in FORMAT.glob("*.py") if p.name != "__init__.py"}  # a copy
        job, ref, ids = make_job(tmp_path, name, up, out, True, images[1])
        jobs.append(job)
        refs.append((ref, ids, "SwapVLMForConditionalGeneration", "SwapVLMProcessor"))

    reports = run_without_vlm_swap(jobs)
    assert len(reports) == len(jobs)
    for job, report, (ref, ids, model_cls, proc_cls) in zip(jobs, reports, refs, strict=True):
        assert report == {"class": model_cls, "processor": proc_cls}
        result = load_file(job["result"])
        assert torch.allclose(result["logits"], ref, atol=1e-4), (result["logits"] - ref).abs().max()
        assert torch.equal(result["input_ids"], ids)  # the exported processor expands the prompt the same way
        assert result["gen"].shape[1] == ids.shape[1] + 3


def test_export_command_writes_and_refuses_in_one_line(tmp_path, llava, vit):
    from typer.testing import CliRunner

    from vlm_swap.cli import app

    up = vlm_swap.upgrade(str(llava("llama2", "clip")), f"hf-vit:{vit('clip')}", tmp_path / "up")
    runner = CliRunner()
    ok = runner.invoke(app, ["export", str(up), "--format", "llava", "--out", str(tmp_path / "hf")])
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == [
        "LlavaForConditionalGeneration"
    ]
    again = runner.invoke(app, ["export", str(up), "--format", "llava", "--out", str(tmp_path / "hf")])
    assert again.exit_code == 2 and "not empty" in again.output and "Traceback" not in again.output
    forced = runner.invoke(
        app, ["export", str(up), "--format", "remote-code", "--out", str(tmp_path / "hf"), "--force"]
    )
    assert forced.exit_code == 0 and (tmp_path / "hf" / "modeling_swap_vlm.py").is_file()


def test_export_refusals(tmp_path, llava, perceiver, vit):
    perc = vlm_swap.upgrade(str(llava("llama2", "clip")), f"perceiver:{perceiver('qwen3_vl')}", tmp_path / "p")
    with pytest.raises(VlmSwapError, match="use --format remote-code"):
        export(perc, "llava", tmp_path / "x")
    relu = vlm_swap.upgrade(
        str(llava("llama2", "clip")), f"hf-vit:{vit('clip')}", tmp_path / "r", connector="mlp2x-relu"
    )
    with pytest.raises(VlmSwapError, match="mlp2x-relu"):
        export(relu, "llava", tmp_path / "x")
    s2 = vlm_swap.upgrade(str(llava("llama2", "clip")), f"hf-vit:{vit('siglip2')}", tmp_path / "s2")
    with pytest.raises(VlmSwapError, match="siglip2"):
        export(s2, "llava", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(VlmSwapError, match="not empty"):
        export(perc, "remote-code", tmp_path / "full")
    with pytest.raises(VlmSwapError, match="not a vlm-swap output"):  # --force replaces only our outputs
        export(perc, "remote-code", tmp_path / "full", force=True)
    assert (tmp_path / "full" / "f").read_text() == "x"
    (tmp_path / "full" / "vlm_swap.json").write_text("{}")
    export(perc, "remote-code", tmp_path / "full", force=True)
    assert (tmp_path / "full" / "README.md").is_file() and not (tmp_path / "full" / "f").exists()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "adapter_config.json").write_text("{}")
    with pytest.raises(VlmSwapError, match="vlm-swap merge"):
        export(tmp_path / "run", "llava", tmp_path / "y")
    with pytest.raises(VlmSwapError, match="not a vlm-swap"):
        export(llava("llama2", "clip"), "remote-code", tmp_path / "y")
    with pytest.raises(VlmSwapError, match="unknown export format"):
        export(perc, "gguf", tmp_path / "y")


def test_llava_export_of_a_text_only_template_renders_prompts_like_the_swap_processor(tmp_path, bare_llm, vit, images):
    from transformers import LlavaProcessor

    built = vlm_swap.build(str(bare_llm("llama3")), f"hf-vit:{vit('siglip')}", tmp_path / "built")
    _, swap = vlm_swap.load(built)
    assert swap.text_only_template
    native = LlavaProcessor.from_pretrained(export(built, "llava", tmp_path / "llava"))
    for n in (1, 2):
        text = ask(swap, n)
        content = [{"type": "image"}] * n + [{"type": "text", "text": "what color is the shape on the left?"}]
        messages = [{"role": "user", "content": content}]
        assert native.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == text
        a = swap(images=images[:n], text=text, return_tensors="pt")
        b = native(images=images[:n], text=text, return_tensors="pt")
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])


def test_llava_export_copies_every_tensor_unchanged_from_a_sharded_model(tmp_path, llava, vit):
    """The weights are copied byte for byte (renamed, never cast); the identity layer of ``linear`` is added."""
    from vlm_swap.export.llava import llava_key

    up = vlm_swap.upgrade(
        str(llava("qwen3", "clip")), f"hf-vit:{vit('siglip')}", tmp_path / "up", connector="linear",
        max_shard_bytes=64 * 1024,
    )  # fmt: skip
    assert len(list(up.glob("model-*-of-*.safetensors"))) > 2
    source, exported = read_tensors(up), read_tensors(export(up, "llava", tmp_path / "llava"))
    base_prefix = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(up).text_config).base_model_prefix
    renamed = {llava_key(key, base_prefix): t for key, t in source.items()}
    identity = {"model.multi_modal_projector.linear_2.weight", "model.multi_modal_projector.linear_2.bias"}
    assert set(exported) == set(renamed) | identity and not identity & set(renamed)
    for name, t in renamed.items():
        assert exported[name].dtype == t.dtype and torch.equal(exported[name], t), name
    linear = source["connector.0.weight"]  # [D_llm, D_enc]
    eye = torch.eye(linear.shape[0], dtype=linear.dtype)
    assert torch.equal(exported["model.multi_modal_projector.linear_2.weight"], eye)


def test_the_shipped_code_needs_no_library_beyond_torch_and_transformers():
    """What transformers checks before it runs a hub model's remote code (``check_imports`` on every file): the
    format's files import only torch, transformers and their own dependencies outside ``try`` blocks, so an
    exported model of any kind loads without timm, open_clip, accelerate or vlm-swap installed."""
    from transformers.dynamic_module_utils import get_imports

    needed = set().union(*(get_imports(p) for p in FORMAT.glob("*.py") if p.name != "__init__.py"))
    needed -= sys.stdlib_module_names
    assert needed <= {"torch", "transformers", "huggingface_hub", "PIL", "safetensors"}, needed
    assert {"torch", "transformers"} <= needed  # the scan sees imports at all
