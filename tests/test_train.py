"""Training on the HF Trainer: plan, frozen parts, loss, peft adapter, merge, resume, torchrun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

import vlm_swap
from vlm_swap.connectors import CONNECTORS
from vlm_swap.train.lock import hold_lock
from vlm_swap.train.recipe import load_recipe
from vlm_swap.train.run import train
from vlm_swap.zoo.world import write_dataset

from .helpers import ask, expected_lora_params, read_tensors

FAST = [
    "stages.align.steps=6",
    "stages.lora.steps=6",
    "stages.align.batch_size=4",
    "stages.lora.batch_size=4",
    "stages.align.save_steps=3",
    "stages.lora.save_steps=3",
    "stages.align.logging_steps=1",
    "stages.lora.logging_steps=1",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, llava, perceiver):
    root = tmp_path_factory.mktemp("train")
    up = vlm_swap.upgrade(str(llava("qwen3", "clip")), f"perceiver:{perceiver()}", root / "up")
    data = write_dataset(root / "data", 24, seed=11)
    return root, up, data


@pytest.fixture(scope="module")
def lora_run(setup):
    root, up, data = setup
    return train("tiny-cpu", up, data, root / "run", images=data.parent, overrides=FAST, progress=False)


def test_run_layout_and_trainable_counts(setup, lora_run):
    _, up, _ = setup
    for name in ("adapter_config.json", "adapter_model.safetensors", "recipe.yaml", "run.json", "loss.png"):
        assert (lora_run / name).is_file(), name
    assert sorted(p.name for p in (lora_run / "stage-1-align").iterdir()) == ["checkpoint-3", "checkpoint-6", "final"]
    for ckpt in ("checkpoint-3", "checkpoint-6"):
        assert (lora_run / "stage-2-lora" / ckpt / "trainer_state.json").is_file()
    summary = json.loads((lora_run / "run.json").read_text())
    model, _ = vlm_swap.load(up)
    conn = CONNECTORS.get(model.config.connector).num_params(
        model.config.encoder_dim, model.config.text_config.hidden_size
    )
    lora = load_recipe("tiny-cpu").stages[1].llm.lora
    align, tune = summary["stages"]
    assert align["trainable"] == {"encoder": 0, "connector": conn, "llm": 0}
    assert tune["trainable"] == {"encoder": 0, "connector": conn, "llm": expected_lora_params(model, "llm", lora)}
    resolved = yaml.safe_load((lora_run / "recipe.yaml").read_text())
    assert resolved["stages"][0]["steps"] == 6


def test_lora_touches_only_planned_modules_and_loads_in_plain_peft(setup, lora_run):
    _, up, _ = setup
    adapter = load_file(str(lora_run / "adapter_model.safetensors"))
    lora_keys = [k for k in adapter if "lora_" in k]
    targets = set(load_recipe("tiny-cpu").stages[1].llm.lora.target_modules)
    assert lora_keys and all(k.split(".lora_")[0].rsplit(".", 1)[-1] in targets for k in lora_keys)
    assert all(".language_model." in k for k in lora_keys)
    assert {k for k in adapter if "lora_" not in k} == {k for k in adapter if ".connector." in k}
    base = AutoModelForImageTextToText.from_pretrained(up)
    peft_model = PeftModel.from_pretrained(base, str(lora_run))
    conn = peft_model.base_model.model.connector.modules_to_save["default"]
    key = next(k for k in adapter if k.endswith("connector.0.weight"))
    assert torch.equal(conn[0].weight, adapter[key])


def test_loss_decreases(lora_run):
    history = json.loads((lora_run / "stage-1-align" / "final" / "log_history.json").read_text())
    losses = [e["loss"] for e in history if "loss" in e]
    assert len(losses) >= 5 and losses[-1] < losses[0]


def test_merge_gives_the_same_logits(setup, lora_run, images):
    root, up, _ = setup
    merged_dir = vlm_swap.train.run.merge(lora_run, root / "merged")
    merged, processor = vlm_swap.load(merged_dir)
    peft_model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(up), str(lora_run)).eval()
    inputs = processor(images=images[:1], text=ask(processor, 1), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        a = merged(**inputs).logits
        b = peft_model(**inputs).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert not any("lora" in k for k in read_tensors(merged_dir))


def test_frozen_parts_stay_bit_identical(setup, tmp_path):
    _, up, data = setup
    recipe = tmp_path / "connector-only.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "c",
                "stages": [
                    {
                        "name": "align",
                        "connector": {"mode": "full"},
                        "lr": 1e-2,
                        "steps": 4,
                        "batch_size": 4,
                        "save_steps": 2,
                        "precision": "fp32",
                        "max_length": 256,
                    }
                ],
            }
        )
    )
    run = train(str(recipe), up, data, tmp_path / "run", images=data.parent, progress=False)
    before, after = read_tensors(up), read_tensors(run)
    assert set(before) == set(after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("connector.") for k in changed)
    model, _ = vlm_swap.load(run)  # a run without LoRA is a full upgraded model
    assert model.config.model_type == "swap_vlm"


def test_wsd_decays_over_the_steps_of_its_epochs(setup, tmp_path):
    """A WSD stage given in epochs decays over the steps those epochs take, as the same stage given in steps."""
    _, up, data = setup  # 24 rows, batch 4: 6 steps per epoch
    stage = {"name": "align", "connector": {"mode": "full"}, "scheduler": "wsd", "warmup_ratio": 0.0}
    stage |= {"decay_ratio": 0.5, "batch_size": 4, "precision": "fp32", "max_length": 256, "logging_steps": 1}
    rates = {}
    for length in ({"epochs": 1.0}, {"steps": 6}):
        recipe = tmp_path / f"{next(iter(length))}.yaml"
        recipe.write_text(yaml.safe_dump({"name": "wsd", "stages": [{**stage, **length}]}))
        run = train(str(recipe), up, data, tmp_path / recipe.stem, images=data.parent, progress=False)
        history = json.loads((run / "stage-1-align" / "final" / "log_history.json").read_text())
        rates[recipe.stem] = [e["learning_rate"] for e in history if "learning_rate" in e]
    assert rates["epochs"] == rates["steps"]
    assert len(rates["epochs"]) == 6 and rates["epochs"][:3] == [1e-3] * 3 and rates["epochs"][-1] < 1e-3 / 2


def test_progress_is_printed_from_the_first_step_when_the_output_is_not_a_terminal(setup, tmp_path):
    import io

    from rich.console import Console

    _, up, data = setup
    buf = io.StringIO()
    overrides = ["stages.align.steps=3", "stages.lora.steps=2", "stages.align.logging_steps=100"]
    train("tiny-cpu", up, data, tmp_path / "run", images=data.parent, overrides=overrides, console=Console(file=buf))
    lines = buf.getvalue().splitlines()
    assert "stage 1/2 align: step 1/3  loss " in "\n".join(lines) and "stage 2/2 lora: step 2/2" in "\n".join(lines)
    assert "nan" not in buf.getvalue()
    # every progress line names its stage and step: no last frame of the live display, squeezed to 80 columns
    progress = [line for line in lines if line.startswith("stage ") and "loss" in line]
    assert progress and all(line.startswith(("stage 1/2 align: step ", "stage 2/2 lora: step ")) for line in progress)


def test_a_finished_run_leaves_no_dataloader_worker_running(setup, tmp_path):
    """Persistent workers end with their stage, in this process: none outlives the run, and none is left for a
    later stage's or run's forked workers to finalize (where that fails)."""
    psutil = pytest.importorskip("psutil")
    _, up, data = setup
    overrides = ["stages.align.steps=2", "stages.lora.steps=2", "dataloader_workers=1"]
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    train("tiny-cpu", up, data, tmp_path / "run", images=data.parent, overrides=overrides, progress=False)
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and p.is_running()]
    assert left == []


def test_resume_reaches_the_same_step_and_loss(setup, lora_run, tmp_path):
    """Cut the run back to its state right after stage 2 saved checkpoint-3, then --resume."""
    _, up, data = setup
    cut = tmp_path / "cut"
    shutil.copytree(lora_run, cut)
    shutil.rmtree(cut / "stage-2-lora" / "final")
    shutil.rmtree(cut / "stage-2-lora" / "checkpoint-6")
    for name in ("adapter_config.json", "adapter_model.safetensors", "run.json", "loss.png"):
        (cut / name).unlink()
    resumed = train("tiny-cpu", up, data, cut, images=data.parent, overrides=FAST, resume=True, progress=False)
    a = json.loads((lora_run / "run.json").read_text())
    b = json.loads((resumed / "run.json").read_text())
    assert b["stages"][0]["skipped"] == "finished earlier"
    assert b["stages"][1]["resumed_from"].endswith("checkpoint-3")
    assert b["stages"][1]["steps"] == a["stages"][1]["steps"] == 6
    assert b["final_loss"] == pytest.approx(a["final_loss"], rel=1e-5)
    torch.testing.assert_close(
        load_file(str(resumed / "adapter_model.safetensors")),
        load_file(str(lora_run / "adapter_model.safetensors")),
        atol=1e-6,
        rtol=1e-5,
    )


def test_a_started_run_needs_resume(setup, lora_run):
    _, up, data = setup
    with pytest.raises(vlm_swap.VlmSwapError, match="not empty; pass --resume"):
        train("tiny-cpu", up, data, lora_run, images=data.parent, overrides=FAST, progress=False)
    with pytest.raises(vlm_swap.VlmSwapError, match="recipe differs"):
        train("tiny-cpu", up, data, lora_run, images=data.parent, overrides=FAST[:-1], resume=True, progress=False)


@pytest.mark.slow
def test_torchrun_two_processes_write_the_same_adapter_format(setup, tmp_path):
    _, up, data = setup
    run = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "vlm_swap.cli",
        "train",
        "tiny-cpu",
        "--model",
        str(up),
        "--data",
        str(data),
        "--images",
        str(data.parent),
        "--out",
        str(run),
    ] + [a for o in FAST for a in ("--set", o)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with hold_lock(run):  # rank 0 is refused the run directory, and rank 1 with it
        refused = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert refused.returncode != 0  # (torchrun adds its own report of the failed workers)
    assert refused.stderr.count(f"in use by process {os.getpid()}") == 2, refused.stderr[-3000:]
    assert not run.exists()  # nothing written
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    adapter = load_file(str(run / "adapter_model.safetensors"))
    assert any("lora_" in k for k in adapter) and any(".connector." in k for k in adapter)
    assert json.loads((run / "adapter_config.json").read_text())["peft_type"] == "LORA"
    state = json.loads((run / "stage-2-lora" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6


def test_samples_too_long_for_any_stage_are_dropped_before_training(setup, tmp_path):
    """Validation uses the shortest stage max_length: no sample can fail in the middle of a later stage."""
    _, up, data = setup
    with pytest.raises(vlm_swap.VlmSwapError, match=r"no usable rows .*24 too long"):
        train(
            "tiny-cpu",
            up,
            data,
            tmp_path / "run",
            images=data.parent,
            overrides=[*FAST, "stages.align.max_length=8"],
            progress=False,
        )
    assert not (tmp_path / "run").exists()
