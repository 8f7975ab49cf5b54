"""On a CUDA device (skipped without one): mixed-precision training of a recipe, flash-attention where it is
installed, and the exports' logits on the GPU.

These are the checks the CPU suite cannot make: autocast with float32 masters (bf16, and fp16 with the
Trainer's loss scaling, which refuses 16-bit trainable parameters), the GPU telemetry (peak memory, MFU),
and exported checkpoints computing on the GPU what the upgraded model computes there.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, LlavaForConditionalGeneration

import vlm_swap
from vlm_swap.export import export
from vlm_swap.train.flops import peak_flops
from vlm_swap.train.run import train
from vlm_swap.zoo.world import write_dataset

from .helpers import ask

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

FAST = [f"stages.{s}.{k}={v}" for s in ("align", "lora") for k, v in
        (("steps", 8), ("batch_size", 4), ("logging_steps", 2), ("save_steps", 4))]  # fmt: skip


def _precision(p: str) -> list[str]:
    return [*FAST, f"stages.align.precision={p}", f"stages.lora.precision={p}"]


@pytest.fixture(scope="module")
def models(tmp_path_factory, llava, perceiver, vit):
    root = tmp_path_factory.mktemp("gpu")
    src = str(llava("qwen3", "clip"))
    return {
        "dpa": vlm_swap.upgrade(src, f"perceiver:{perceiver()}", root / "dpa"),
        "dpa-fp16": vlm_swap.upgrade(src, f"perceiver:{perceiver()}", root / "dpa16", dtype="float16"),
        "vit": vlm_swap.upgrade(src, f"hf-vit:{vit()}", root / "vit", connector="mlp2x-gelu"),
        "data": write_dataset(root / "data", 16, seed=3, texts=4),
    }


def _history(run, stage: str) -> list[dict]:
    (final,) = run.glob(f"stage-*-{stage}/final")
    return [e for e in json.loads((final / "log_history.json").read_text()) if "loss" in e]


def test_bf16_training_keeps_float32_masters_and_logs_gpu_figures(models, tmp_path):
    data = models["data"]
    run = train("tiny-cpu", models["dpa"], data, tmp_path / "run", images=data.parent, overrides=_precision("bf16"))
    facts = json.loads((run / "run.json").read_text())["stages"][1]["facts"]
    assert facts["autocast"] == "bf16"
    assert facts["dtypes"] == {"encoder": "frozen bfloat16", "connector": "trainable float32",
                               "llm": "trainable float32, frozen bfloat16"}  # fmt: skip
    align = _history(run, "align")
    assert align[-1]["loss"] < align[0]["loss"]
    known_peak = peak_flops(torch.cuda.get_device_name()) is not None
    for entry in align:
        assert entry["peak_mem_gib"] > 0 and 0 <= entry["data_wait"] < 1
        assert (0 < entry["mfu"] < 1) if known_peak else "mfu" not in entry
    adapter = load_file(str(run / "adapter_model.safetensors"))
    assert {t.dtype for t in adapter.values()} == {torch.float32}
    model, processor = vlm_swap.load(run, dtype=torch.bfloat16, device="cuda")
    inputs = processor(text=ask(processor, 0, "say hello."), return_tensors="pt").to("cuda")
    assert model.generate(**inputs, max_new_tokens=3, do_sample=False).shape[1] == inputs["input_ids"].shape[1] + 3


def test_an_fp16_source_trains_with_fp16_loss_scaling(models, tmp_path):
    """GradScaler unscales float32 gradients only: the trainable float32 masters make fp16 training possible."""
    data = models["data"]
    run = train(
        "tiny-cpu", models["dpa-fp16"], data, tmp_path / "run", images=data.parent, overrides=_precision("fp16")
    )
    for stage in ("align", "lora"):
        assert all(torch.isfinite(torch.tensor(e["loss"])) for e in _history(run, stage))
    facts = json.loads((run / "run.json").read_text())["stages"][0]["facts"]
    assert facts["dtypes"]["encoder"] == "frozen float16" and facts["dtypes"]["connector"] == "trainable float32"


def _inputs(processor, image):
    return {k: v.to("cuda") for k, v in processor(images=[image], text=ask(processor, 1), return_tensors="pt").items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_exports_compute_the_upgraded_models_logits_on_the_gpu(models, tmp_path, images, dtype):
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}
    for name, fmt, cls, remote in (("vit", "llava", LlavaForConditionalGeneration, False),
                                   ("dpa", "remote-code", AutoModelForImageTextToText, True)):  # fmt: skip
        out = export(models[name], fmt, tmp_path / f"{name}-{fmt}")
        model, processor = vlm_swap.load(models[name], dtype=dtype, device="cuda")
        exported = cls.from_pretrained(out, dtype=dtype, trust_remote_code=remote).to("cuda").eval()
        inputs = _inputs(processor, images[0])
        with torch.no_grad():
            torch.testing.assert_close(exported(**inputs).logits, model(**inputs).logits, **tol)


def test_flash_attention_gives_the_sdpa_logits_and_trains(models, images):
    pytest.importorskip("flash_attn")
    path = models["dpa"]
    sdpa = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.bfloat16).to("cuda").eval()
    flash = AutoModelForImageTextToText.from_pretrained(
        path, dtype=torch.bfloat16, attn_implementation="flash_attention_2"
    ).to("cuda")
    assert flash.language_model.config._attn_implementation == "flash_attention_2"
    _, processor = vlm_swap.load(path)
    inputs = _inputs(processor, images[0])
    with torch.no_grad():
        torch.testing.assert_close(flash.eval()(**inputs).logits, sdpa(**inputs).logits, atol=5e-2, rtol=5e-2)
    flash.train()
    loss = flash(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss) and flash.connector[0].weight.grad is not None
