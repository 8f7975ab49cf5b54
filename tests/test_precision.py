"""Precision: trained parameters held in float32 whatever the stored dtype; frozen ones in the stored (CPU) or
compute (GPU) dtype; a bf16-stored model trains like its float32 twin, where plain bf16 updates fall behind."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

import vlm_swap
from vlm_swap.train import precision
from vlm_swap.train.plan import run_plan, wrap
from vlm_swap.train.recipe import load_recipe
from vlm_swap.train.run import train
from vlm_swap.zoo.world import write_dataset

from .helpers import read_tensors

DTYPES = ("float32", "bfloat16", "float16")
TWO_STEPS = [f"stages.{s}.{k}={v}" for s in ("align", "lora") for k, v in (("steps", 2), ("batch_size", 4))]
#: |loss(bf16-stored) - loss(fp32 twin)|, mean over the last pass of the same batches (measured: 1e-4; plain bf16
#: updates: 3e-2)
TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def stored(tmp_path_factory, llava, perceiver):
    """The same upgraded model stored in each dtype (bf16 and fp16 are roundings of the float32 one)."""
    root = tmp_path_factory.mktemp("precision")
    src, enc = str(llava("qwen3", "clip")), f"perceiver:{perceiver()}"
    models = {d: vlm_swap.upgrade(src, enc, root / d, dtype=d) for d in DTYPES}
    return root, models, write_dataset(root / "data", 24, seed=11)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_trained_parameters_are_float32_frozen_ones_keep_the_stored_dtype(stored, dtype):
    _, models, _ = stored
    recipe = load_recipe("tiny-cpu")  # stage 1 the connector, stage 2 the connector + LoRA on the LLM
    model, _ = vlm_swap.load(models[dtype])
    model = wrap(model, run_plan(recipe), seed=0)
    kept = precision.place(model, recipe, on_gpu=False)
    trained = precision.trained_anywhere(model, recipe)
    assert any(".connector." in n for n in trained) and any("lora_" in n for n in trained)
    for name, param in model.named_parameters():
        assert param.dtype == (torch.float32 if name in trained else getattr(torch, dtype)), name
        if "lora_" not in name:  # peft creates LoRA weights in float32 already
            assert kept[name] == getattr(torch, dtype)
    held = precision.component_dtypes(model)
    assert held["connector"].startswith("trainable float32") and held["encoder"] == f"frozen {dtype}"


def test_on_a_gpu_frozen_parts_take_the_recipe_compute_dtype(stored):
    _, models, _ = stored
    recipe = load_recipe("dpa-align-short")  # bf16 stages
    model, _ = vlm_swap.load(models["float32"])
    model = wrap(model, run_plan(recipe), seed=0)
    precision.place(model, recipe, on_gpu=True)
    trained = precision.trained_anywhere(model, recipe)
    assert {p.dtype for n, p in model.named_parameters() if n in trained} == {torch.float32}
    assert {p.dtype for n, p in model.named_parameters() if n not in trained} == {torch.bfloat16}


def test_a_float16_model_trains_and_saves_a_float32_adapter(stored, tmp_path):
    _, models, data = stored
    run = train("tiny-cpu", models["float16"], data, tmp_path / "run", images=data.parent, overrides=TWO_STEPS)
    adapter = load_file(str(run / "adapter_model.safetensors"))
    assert {t.dtype for t in adapter.values()} == {torch.float32}
    assert any(".connector." in k for k in adapter)
    summary = json.loads((run / "run.json").read_text())
    assert all(torch.isfinite(torch.tensor(s["train_loss"])) for s in summary["stages"])


def _connector_recipe(path, lr: float, steps: int):
    stage = {"name": "align", "connector": {"mode": "full"}, "lr": lr, "steps": steps, "batch_size": 4,
             "scheduler": "constant", "warmup_ratio": 0.0, "logging_steps": 1, "save_steps": 1000,
             "precision": "fp32", "max_length": 256}  # fmt: skip
    path.write_text(yaml.safe_dump({"name": "connector", "stages": [stage]}))
    return str(path)


def _epoch_losses(run, steps_per_epoch: int) -> list[float]:
    """Mean training loss of each pass over the data (every pass sees every sample once)."""
    history = json.loads((run / "stage-1-align" / "final" / "log_history.json").read_text())
    losses = [e["loss"] for e in history if "loss" in e]
    return [sum(losses[i : i + steps_per_epoch]) / steps_per_epoch for i in range(0, len(losses), steps_per_epoch)]


def test_a_bf16_stored_model_reaches_the_fp32_twin_loss_where_plain_bf16_updates_do_not(stored, tmp_path, monkeypatch):
    """lr 1e-4 on a connector whose weights are ~0.06: a bf16 weight's spacing there is 2.4e-4, so most
    Adam updates (~lr) round away in bf16, and are kept by a float32 master."""
    _, models, data = stored
    recipe = _connector_recipe(tmp_path / "c.yaml", lr=1e-4, steps=24)
    opts = {"images": data.parent, "progress": False}
    twin = _epoch_losses(train(recipe, models["float32"], data, tmp_path / "fp32", **opts), 6)  # 24 rows / 4
    master_run = train(recipe, models["bfloat16"], data, tmp_path / "master", **opts)
    master = _epoch_losses(master_run, 6)
    # the same run without the float32 masters: the connector trained in the dtype it was stored in
    monkeypatch.setattr(precision, "place", lambda model, *_, **__: {n: p.dtype for n, p in model.named_parameters()})
    plain = _epoch_losses(train(recipe, models["bfloat16"], data, tmp_path / "plain", **opts), 6)
    print(f"epoch losses: fp32 twin {twin}, bf16 + fp32 masters {master}, plain bf16 {plain}")
    assert twin[-1] < twin[0] - 0.02  # the twin learns something in these steps
    assert abs(master[-1] - twin[-1]) < TOLERANCE
    assert abs(plain[-1] - twin[-1]) > 10 * TOLERANCE
    # a full model is saved in the dtype it was stored in: frozen parts bit-identical, the connector trained
    before, after = read_tensors(models["bfloat16"]), read_tensors(master_run)
    assert {t.dtype for t in after.values()} == {torch.bfloat16}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("connector.") for k in changed)
