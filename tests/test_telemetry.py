"""Run facts and throughput: what a stage prints and stores at start, what every training log carries, and
the model FLOP counter behind MFU (checked against torch's FLOP counter)."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import vlm_swap
from vlm_swap.data import Collator, Sample, SampleEncoder, parse_row
from vlm_swap.data.formats import read_rows
from vlm_swap.train.flops import FlopCounter
from vlm_swap.train.plan import apply_stage, run_plan, wrap
from vlm_swap.train.recipe import load_recipe
from vlm_swap.train.run import train
from vlm_swap.zoo.world import write_dataset

PER_STAGE = {"steps": 4, "batch_size": 2, "grad_accum": 2, "logging_steps": 2, "save_steps": 100}
SETTINGS = [f"stages.{s}.{k}={v}" for s in ("align", "lora") for k, v in PER_STAGE.items()]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, llava, perceiver):
    root = tmp_path_factory.mktemp("telemetry")
    up = vlm_swap.upgrade(str(llava("qwen3", "clip")), f"perceiver:{perceiver()}", root / "up")
    return root, up, write_dataset(root / "data", 12, seed=5)


def test_a_stage_states_its_facts_and_logs_its_throughput(setup):
    root, up, data = setup
    run = train("tiny-cpu", up, data, root / "run", images=data.parent, overrides=SETTINGS, progress=False)
    summary = json.loads((run / "run.json").read_text())
    align, lora = (s["facts"] for s in summary["stages"])
    assert align["world_size"] == 1 and align["global_batch"] == 2 * 2 * 1
    assert align["trainable"] == summary["stages"][0]["trainable"] and align["trainable"]["llm"] == 0
    assert lora["trainable"]["llm"] > 0
    assert align["dtypes"]["connector"] == "trainable float32" and align["dtypes"]["encoder"] == "frozen float32"
    # tokens per step: the global batch times the mean validated sample length
    model, processor = vlm_swap.load(up)
    encoder = SampleEncoder(processor, 256)
    lengths = [len(encoder(Sample(n, *parse_row(r, data.parent, 1)))["input_ids"]) for n, r in read_rows(data)]
    assert align["tokens_per_step"] == round(4 * sum(lengths) / len(lengths))
    history = json.loads((run / "stage-1-align" / "final" / "log_history.json").read_text())
    logged = [e for e in history if "loss" in e]
    assert [e["step"] for e in logged] == [1, 2, 4]  # the first step, then every logging_steps
    for entry in logged:
        assert entry["samples_per_second"] > 0 and entry["tokens_per_second"] > 0
        assert 0 <= entry["data_wait"] < 1 and entry["peak_rss_gib"] > 0
        assert "mfu" not in entry  # no peak FLOP/s to compare with on a CPU


def test_flop_counter_matches_torch_and_weighs_the_backward(setup):
    _, up, data = setup
    recipe = load_recipe("tiny-cpu")
    model, processor = vlm_swap.load(up)
    model = wrap(model, run_plan(recipe), seed=0).train()
    apply_stage(model, recipe.stages[1])  # connector + LoRA on the LLM; the encoder frozen
    encoder = SampleEncoder(processor, 256)
    samples = [Sample(n, *parse_row(r, data.parent, 1)) for n, r in list(read_rows(data))[:2]]
    batch = Collator(processor.tokenizer.pad_token_id)([encoder(s) for s in samples])
    counter = FlopCounter(model)
    with torch.no_grad(), FlopCounterMode(display=False) as reference:
        model(**batch)
    forward = counter.take()
    assert set(forward) == {"encoder", "connector", "llm"}
    # torch also counts attention scores; the layers that ran are all the rest
    assert 0.85 * reference.get_total_flops() <= sum(forward.values()) <= reference.get_total_flops()
    model(**batch).loss.backward()
    trained = counter.take()
    assert trained["encoder"] == forward["encoder"]  # frozen upstream of all training: forward only (2N)
    assert 2 * forward["llm"] < trained["llm"] < 3 * forward["llm"]  # frozen 4N, LoRA 6N
    assert 2 * forward["connector"] <= trained["connector"] <= 3 * forward["connector"]  # weight (+ input) grads
    counter.remove()
    model(**batch)
    assert counter.take() == {}
