"""The real ``vlm-swap train`` command at the shapes of ``bench_gpu.py`` (used by it).

Writes, once, the DPA model as a user has it on disk: a Qwen3-4B-shaped bare LLM and a Qwen3-VL-2B-shaped
perceiver (random weights in bf16, the zoo's Qwen-style tokenizer, a real Qwen3-VL processor), joined by
``vlm_swap.build``; and a data file of scenes resized to the benchmark's image side with answers of about the
benchmark's text tokens. Then runs ``vlm-swap train dpa-align-short`` on it (``torchrun --nproc_per_node N``
for N GPUs) at the plan loop's micro-batches, without the feature cache (the plan loop runs the encoder every
step too), and reads each stage's samples/s, data-wait fraction and MFU from the run's own training logs:
the last logged interval, after as many steps as came before it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import transformers as tf
from bench_perceiver import qwen3_vl_processor, qwen_token_ids

import vlm_swap
from vlm_swap.zoo.tokenizers import make_tokenizer
from vlm_swap.zoo.world import write_dataset


def model_dir(shapes: dict, root: Path, device: torch.device) -> Path:
    """The upgraded DPA model (built once and reused)."""
    out = root / "dpa"
    if (out / "config.json").is_file():
        return out
    torch.manual_seed(0)
    tok = make_tokenizer("qwen")
    text = dict(vocab_size=shapes["vocab"], max_position_embeddings=8192, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, **shapes["perceiver_text"],
                rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": shapes["mrope_section"],
                                 "mrope_interleaved": True})  # fmt: skip
    vision = dict(spatial_merge_size=2, temporal_patch_size=2, **shapes["perceiver_vision"])
    config = tf.Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **qwen_token_ids(tok))
    with torch.device(device):
        perceiver = tf.Qwen3VLForConditionalGeneration(config).to(torch.bfloat16)
    perceiver.save_pretrained(root / "perceiver")
    qwen3_vl_processor(tok, shapes["image_px"] ** 2).save_pretrained(root / "perceiver")
    del perceiver
    ids = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    target = tf.Qwen3Config(vocab_size=shapes["vocab"], tie_word_embeddings=True, max_position_embeddings=8192,
                            **ids, **shapes["target"])  # fmt: skip
    with torch.device(device):
        llm = tf.Qwen3ForCausalLM(target).to(torch.bfloat16)
    llm.save_pretrained(root / "llm")
    tok.save_pretrained(root / "llm")
    del llm
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return vlm_swap.build(str(root / "llm"), f"perceiver:{root / 'perceiver'}", out, dtype="bfloat16")


def data_file(root: Path, rows: int, side: int, text_tokens: int) -> Path:
    """Caption rows of scenes ``side`` x ``side`` pixels, each answer repeated to about ``text_tokens`` tokens."""
    from PIL import Image

    tok = make_tokenizer("qwen")
    path = write_dataset(root / "data", rows, seed=0, captions=True)
    table = json.loads(path.read_text())
    for row in table:
        image = path.parent / row["image"]
        Image.open(image).convert("RGB").resize((side, side)).save(image)
        answer = row["conversations"][1]["value"]
        per = max(1, len(tok(answer)["input_ids"]))
        row["conversations"][1]["value"] = " ".join([answer] * max(1, text_tokens // per))
    path.write_text(json.dumps(table))
    return path


def train_figures(model: Path, data: Path, root: Path, batch: dict[str, int], steps: int, gpus: int) -> dict:
    """Per stage of ``dpa-align-short`` run by the CLI: samples/s per GPU, data wait and MFU of the last interval."""
    run = root / f"run-{gpus}gpu"
    sets = []
    for stage, n in batch.items():
        for key, value in (("steps", 2 * steps), ("batch_size", n), ("grad_accum", 1), ("logging_steps", steps),
                           ("save_steps", 10 * steps), ("cache_features", "false")):  # fmt: skip
            sets += ["--set", f"stages.{stage}.{key}={value}"]
    launcher = [sys.executable] if gpus == 1 else [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                                                   str(gpus)]  # fmt: skip
    cmd = [*launcher, "-m", "vlm_swap.cli", "train", "dpa-align-short", "--model", str(model), "--data", str(data),
           "--images", str(data.parent), "--out", str(run), *sets]  # fmt: skip
    shutil.rmtree(run, ignore_errors=True)
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    out = {}
    for stage in batch:
        (final,) = run.glob(f"stage-*-{stage}/final")
        last = [e for e in json.loads((final / "log_history.json").read_text()) if "loss" in e][-1]
        out[stage] = {
            "samples_per_s": last["samples_per_second"] / gpus,
            "data_wait": last["data_wait"],
            "mfu": last.get("mfu"),
            "peak_mem_gib": last.get("peak_mem_gib"),
            "step": last["step"],
        }
    return out
