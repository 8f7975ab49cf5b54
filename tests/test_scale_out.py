"""Training on 2 CPU processes through the shipped launcher configs: FSDP2 (and DeepSpeed ZeRO-2/3 where
deepspeed is installed) against a single-process run of the same global batch.

The data mixes image rows with text-only rows, so with one sample per process some steps give one rank a
batch without images: without the dummy image that rank skips the encoder's sharded layers and the other's
all-gathers fail ("distributed collective mismatch"). Both stages of ``tiny-cpu`` run (connector, then
connector + LoRA on the LLM: frozen encoder, fully trained connector, LoRA'd LLM); the FSDP2 run is killed
with SIGKILL (launcher and workers) after a stage-1 checkpoint and resumed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file

import vlm_swap
from vlm_swap.data import Collator, Sample, SampleEncoder
from vlm_swap.surgery.layouts import data_dir
from vlm_swap.train.lockstep import DummyImage
from vlm_swap.train.plan import apply_stage, run_plan, wrap
from vlm_swap.train.recipe import load_recipe
from vlm_swap.train.run import train
from vlm_swap.zoo.world import write_dataset

STEPS = {"align": 6, "lora": 4}
#: |loss(2 processes) - loss(1 process)| at every logged step (the figure fsdp2_cpu_loss_vs_single: <= 1e-3)
TOLERANCE = 1e-3


def _settings(per_device_batch: int) -> list[str]:
    out = []
    for stage, steps in STEPS.items():
        out += [f"stages.{stage}.steps={steps}", f"stages.{stage}.batch_size={per_device_batch}"]
        out += [f"stages.{stage}.save_steps=2", f"stages.{stage}.logging_steps=1"]
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, llava, perceiver):
    """The upgraded model, the mixed data, and the single-process run at the same global batch (2)."""
    root = tmp_path_factory.mktemp("scale-out")
    up = vlm_swap.upgrade(str(llava("qwen3", "clip")), f"perceiver:{perceiver()}", root / "up")
    data = write_dataset(root / "data", 16, seed=11, texts=8)
    run = train("tiny-cpu", up, data, root / "single", images=data.parent, overrides=_settings(2), progress=False)
    return up, data, run


def _launch(config: str, reference, out, *extra: str, port: int) -> tuple[list[str], dict]:
    """``accelerate launch --config_file recipes/accelerate/CONFIG -m vlm_swap.cli train ...`` on 2 processes."""
    up, data, _ = reference
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"recipes/accelerate/{config}",
           "--num_processes", "2", "--main_process_port", str(port), "-m", "vlm_swap.cli", "train", "tiny-cpu",
           "--model", str(up), "--data", str(data), "--images", str(data.parent), "--out", str(out),
           *[a for o in _settings(1) for a in ("--set", o)], *extra]  # fmt: skip
    return cmd, {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(cmd, env, timeout=600):
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=data_dir("recipes").parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _losses(run) -> dict[str, list[float]]:
    out = {}
    for stage in STEPS:
        (final,) = run.glob(f"stage-*-{stage}/final")
        out[stage] = [e["loss"] for e in json.loads((final / "log_history.json").read_text()) if "loss" in e]
    return out


def _same_result(run, single) -> None:
    """Per-step losses within TOLERANCE of the single process; an adapter of the same format, keys and values."""
    a, b = _losses(run), _losses(single)
    assert [len(v) for v in a.values()] == list(STEPS.values())
    for stage in STEPS:
        assert max(abs(x - y) for x, y in zip(a[stage], b[stage], strict=True)) <= TOLERANCE, (stage, a, b)
    assert json.loads((run / "adapter_config.json").read_text()) == json.loads(
        (single / "adapter_config.json").read_text()
    )
    mine, theirs = (
        load_file(str(run / "adapter_model.safetensors")),
        load_file(str(single / "adapter_model.safetensors")),
    )
    assert mine.keys() == theirs.keys() and {t.dtype for t in mine.values()} == {torch.float32}
    for key in mine:
        torch.testing.assert_close(mine[key], theirs[key], atol=1e-4, rtol=1e-3)


def test_a_text_only_batch_gets_a_dummy_image_that_changes_no_loss_and_no_gradient(reference):
    up, _, _ = reference
    recipe = load_recipe("tiny-cpu")
    model, processor = vlm_swap.load(up)
    model = wrap(model, run_plan(recipe), seed=0).train()
    apply_stage(model, recipe.stages[1])  # connector + LoRA train
    encoder = SampleEncoder(processor, 256)
    texts = [[{"role": "user", "content": [{"type": "text", "text": q}]},
              {"role": "assistant", "content": [{"type": "text", "text": a}]}]
             for q, a in (("say hello.", "hello"), ("what is two plus two?", "four"))]  # fmt: skip
    batch = Collator(processor.tokenizer.pad_token_id)([encoder(Sample(i, m, [])) for i, m in enumerate(texts)])
    dummy = DummyImage(processor, processor.tokenizer.pad_token_id)
    assert dummy.needed(batch)
    padded, _ = dummy.add(batch, None)
    assert padded["input_ids"].shape[1] == batch["input_ids"].shape[1] + dummy.ids.numel()

    def loss_and_grads(inputs):
        model.zero_grad(set_to_none=True)
        loss = model(**inputs).loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    plain_loss, plain = loss_and_grads(batch)
    dummy_loss, with_dummy = loss_and_grads(padded)
    torch.testing.assert_close(dummy_loss, plain_loss, atol=1e-6, rtol=1e-6)
    connector = [n for n in with_dummy if ".connector." in n]
    assert connector and all(plain[n] is None for n in connector)  # without it the connector takes no part
    assert all(with_dummy[n] is not None and not with_dummy[n].any() for n in connector)  # with it: exactly zero
    for name in with_dummy:
        if name not in connector:
            torch.testing.assert_close(with_dummy[name], plain[name], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_fsdp2_on_two_processes_matches_one_and_resumes_after_kill(reference, tmp_path):
    single = reference[2]
    run = tmp_path / "fsdp2"
    cmd, env = _launch("fsdp2.yaml", reference, run, port=29531)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=data_dir("recipes").parent
    )
    marker = run / "stage-1-align" / "checkpoint-2" / "trainer_state.json"
    deadline = time.time() + 400
    while not marker.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:  # workers first
        p.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (run / "adapter_model.safetensors").exists()
    # FSDP ran (not a DDP fallback): the model and optimizer states are sharded, one file per rank
    assert len(list((run / "stage-1-align" / "checkpoint-2" / "pytorch_model_fsdp_0").glob("*.distcp"))) == 2

    _run(*_launch("fsdp2.yaml", reference, run, "--resume", port=29532))
    summary = json.loads((run / "run.json").read_text())
    assert summary["stages"][0]["resumed_from"]  # stage 1 continued from a checkpoint, not from scratch
    assert [s["steps"] for s in summary["stages"]] == list(STEPS.values())
    _same_result(run, single)


@pytest.mark.slow
@pytest.mark.parametrize("zero", [2, 3])
def test_deepspeed_zero_on_two_processes_matches_one_and_resumes(reference, tmp_path, zero):
    """DeepSpeed runs on CPU processes through its CPU accelerator (gloo); skipped where it is not installed."""
    pytest.importorskip("deepspeed")
    single = reference[2]
    run = tmp_path / f"zero{zero}"
    _run(*_launch(f"zero{zero}.yaml", reference, run, port=29540 + zero))
    _same_result(run, single)
    assert (run / "stage-2-lora" / "checkpoint-4" / "latest").is_file()  # DeepSpeed's own checkpoint layout
    # resume stage 2 from its first checkpoint: a second engine on the same model, after the first one's
    for name in ("final", "checkpoint-4"):
        shutil.rmtree(run / "stage-2-lora" / name)
    for name in ("adapter_config.json", "adapter_model.safetensors", "run.json"):
        (run / name).unlink()
    _run(*_launch(f"zero{zero}.yaml", reference, run, "--resume", port=29550 + zero))
    assert json.loads((run / "run.json").read_text())["stages"][1]["resumed_from"].endswith("checkpoint-2")
    _same_result(run, single)
