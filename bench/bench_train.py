"""Training-step speed: vlm-swap against plain transformers + peft, and the frozen-encoder feature cache.

One model, built twice from the same weights: a llava-hf ``LlavaForConditionalGeneration`` (CLIP tower
hidden 256, 4 layers, 128 px / patch 16 = 64 image tokens; Llama LLM hidden 512, 4 layers) and the same
model upgraded by vlm-swap with ``hf-vit`` on that CLIP tower and an ``mlp2x-gelu`` connector (LLaVA's
projector). Both train the connector plus LoRA r=16 alpha=32 on every Linear of the LLM's layers, with
the HF Trainer, AdamW, fp32 (bf16 on a GPU), batch 8, on the same synthetic data processed on the fly.

- ``train_step_vs_hf_baseline``: median step time of ``vlm-swap train`` (feature cache off, so both
  run the encoder every step) / median step time of the plain llava-hf + peft + Trainer loop.
- ``feature_cache_speedup``: median step time of the connector-only stage without / with the feature
  cache, measured after the first pass over the data (which fills the cache).
- ``feature_cache_speedup_perceiver``: the same with the LLM upgraded with a perceiver instead, the
  random-initialised Qwen3-VL small VLM of ``bench_perceiver.py`` (LM hidden 512, 4 layers, vocabulary
  151,936; a 4-block vision tower), so the cache skips a small VLM's forward, not a ViT's.

A step time is the wall time from one optimizer step's end to the next (data loading and collation
included); the first ``--warmup`` steps of each run are left out. Runs of the two sides alternate
(A B B A ...) for ``--rounds`` rounds in one process.

    python bench/bench_train.py [--steps 12] [--rounds 6] [--warmup 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers as tf
import yaml
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainerCallback, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_perceiver import build_perceiver  # noqa: E402
from common import record  # noqa: E402

import vlm_swap  # noqa: E402
from vlm_swap.images import load_image  # noqa: E402
from vlm_swap.train.run import train  # noqa: E402
from vlm_swap.zoo.models import CLIP_MEAN, CLIP_STD  # noqa: E402
from vlm_swap.zoo.tokenizers import LLAVA_PROCESSOR_TEMPLATE, make_tokenizer  # noqa: E402
from vlm_swap.zoo.world import write_dataset  # noqa: E402

IMAGE, PATCH, BATCH, ROWS = 128, 16, 8, 32
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ON_GPU = torch.cuda.is_available()


class StepTimer(TrainerCallback):
    """Wall time between consecutive optimizer-step ends."""

    def __init__(self):
        self.times: list[float] = []
        self._last: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self._last is None:
            self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if ON_GPU:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now


def build(root: Path) -> tuple[Path, Path, Path]:
    """The llava-hf model, its vlm-swap upgrade (same CLIP tower, same LLM) and its upgrade with a perceiver."""
    torch.manual_seed(0)
    tok = make_tokenizer("llama2")
    tok.add_tokens(["<image>", "<pad>"], special_tokens=True)
    tok.pad_token = "<pad>"
    vcfg = tf.CLIPVisionConfig(
        hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4, image_size=IMAGE,
        patch_size=PATCH, projection_dim=256,
    )  # fmt: skip
    tcfg = tf.LlamaConfig(
        vocab_size=len(tok), hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=8, max_position_embeddings=1024, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    config = tf.LlavaConfig(
        vision_config=vcfg, text_config=tcfg, image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(IMAGE // PATCH) ** 2, vision_feature_select_strategy="default", vision_feature_layer=-2,
    )  # fmt: skip
    image_proc = tf.CLIPImageProcessor(
        size={"height": IMAGE, "width": IMAGE}, do_center_crop=False, image_mean=CLIP_MEAN, image_std=CLIP_STD
    )
    processor = tf.LlavaProcessor(
        image_processor=image_proc, tokenizer=tok, patch_size=PATCH, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=LLAVA_PROCESSOR_TEMPLATE,
    )  # fmt: skip
    model = tf.LlavaForConditionalGeneration(config).eval()
    llava, vit = root / "llava", root / "vit"
    model.save_pretrained(llava)
    processor.save_pretrained(llava)
    model.model.vision_tower.save_pretrained(vit)
    image_proc.save_pretrained(vit)
    up = vlm_swap.upgrade(str(llava), f"hf-vit:{vit}", root / "up", connector="mlp2x-gelu")
    perceiver = build_perceiver(root / "perceiver", max_pixels=IMAGE * IMAGE)
    return llava, up, vlm_swap.upgrade(str(llava), f"perceiver:{perceiver}", root / "up-perceiver")


def args_for(out: Path, steps: int) -> dict:
    return dict(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=2e-4,
        lr_scheduler_type="cosine", warmup_steps=0.0, weight_decay=0.0, optim="adamw_torch", bf16=ON_GPU,
        save_strategy="steps", save_steps=10**6, logging_steps=10**6, logging_first_step=True, seed=0, data_seed=0,
        report_to="none", disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0,
        use_cpu=not ON_GPU,
    )  # fmt: skip


class LlavaRows(torch.utils.data.Dataset):
    """The data as a plain HF user feeds a llava-hf model: processor on the fly, loss on the answer."""

    def __init__(self, data: Path, processor):
        self.rows = json.loads(data.read_text())
        self.root = data.parent
        self.processor = processor

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = self.rows[i]
        question = row["conversations"][0]["value"].replace("<image>\n", "")
        answer = row["conversations"][1]["value"]
        user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = self.processor.apply_chat_template(user, add_generation_prompt=True)
        tok = self.processor.tokenizer
        enc = self.processor(
            images=[load_image(self.root / row["image"])], text=prompt + " " + answer, return_tensors="pt"
        )
        ids = enc["input_ids"][0].tolist() + [tok.eos_token_id]
        n_prompt = len(tok(prompt)["input_ids"]) - 1 + (IMAGE // PATCH) ** 2  # <image> expands to 64 tokens
        labels = [-100] * n_prompt + ids[n_prompt:]
        return {"input_ids": ids, "labels": labels, "pixel_values": enc["pixel_values"]}


def llava_collate(pad_id: int):
    def collate(rows):
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad_id)
        labels = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
        pixels = torch.cat([r["pixel_values"] for r in rows])
        return {"input_ids": ids, "labels": labels, "attention_mask": mask, "pixel_values": pixels}

    return collate


def hf_baseline(llava: Path, data: Path, out: Path, steps: int) -> list[float]:
    model = tf.LlavaForConditionalGeneration.from_pretrained(llava)
    processor = tf.AutoProcessor.from_pretrained(llava)
    config = LoraConfig(
        r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], bias="none",
        target_modules=rf"model\.language_model\..*\.({'|'.join(TARGETS)})", modules_to_save=["multi_modal_projector"],
    )  # fmt: skip
    model = get_peft_model(model, config)
    timer = StepTimer()
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**args_for(out, steps)),
        train_dataset=LlavaRows(data, processor),
        data_collator=llava_collate(processor.tokenizer.pad_token_id),
        callbacks=[timer],
    )
    trainer.train()
    return timer.times


def recipe(root: Path, name: str, steps: int, *, lora: bool, cache: bool) -> Path:
    stage = {
        "name": name, "connector": {"mode": "full"}, "lr": 2e-4, "steps": steps, "batch_size": BATCH,
        "max_length": 512, "scheduler": "cosine", "warmup_ratio": 0.0, "precision": "bf16" if ON_GPU else "fp32",
        "save_steps": 10**6, "logging_steps": 10**6, "seed": 0, "cache_features": cache,
    }  # fmt: skip
    if lora:
        stage["llm"] = {"mode": "lora", "lora": {**LORA, "target_modules": TARGETS}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "stages": [stage]}))
    return path


def vlm_swap_run(up: Path, data: Path, out: Path, recipe_path: Path) -> list[float]:
    timer = StepTimer()
    train(str(recipe_path), up, data, out, images=data.parent, progress=False, callbacks=[timer])
    return timer.times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run")
    parser.add_argument("--rounds", type=int, default=6, help="alternating runs per side")
    parser.add_argument("--warmup", type=int, default=4, help="steps left out at the start of each run")
    opts = parser.parse_args(argv)
    if opts.warmup * BATCH < ROWS or opts.steps <= opts.warmup:
        parser.error("--warmup must cover the first pass over the data and be below --steps")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        llava, up, up_perceiver = build(root)
        data = write_dataset(root / "data", ROWS, seed=3)  # 4 steps per pass over the data
        lora_recipe = recipe(root, "tune", opts.steps, lora=True, cache=False)
        sides_named = ("vlm-swap", "hf", "cache-off", "cache-on", "perceiver-cache-off", "perceiver-cache-on")
        times: dict[str, list[float]] = {k: [] for k in sides_named}
        off, on = (recipe(root, name, opts.steps, lora=False, cache=name == "on") for name in ("off", "on"))
        sides = {
            "vlm-swap": lambda out: vlm_swap_run(up, data, out, lora_recipe),
            "hf": lambda out: hf_baseline(llava, data, out, opts.steps),
            "cache-off": lambda out: vlm_swap_run(up, data, out, off),
            "cache-on": lambda out: vlm_swap_run(up, data, out, on),
            "perceiver-cache-off": lambda out: vlm_swap_run(up_perceiver, data, out, off),
            "perceiver-cache-on": lambda out: vlm_swap_run(up_perceiver, data, out, on),
        }
        n = 0
        for r in range(opts.rounds):
            pairs = (("vlm-swap", "hf"), ("cache-off", "cache-on"), ("perceiver-cache-off", "perceiver-cache-on"))
            for a, b in pairs:
                for side in (a, b) if r % 2 == 0 else (b, a):
                    n += 1
                    times[side] += sides[side](root / f"run-{n}")[opts.warmup :]
        med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"median step {k}: {v * 1000:.1f} ms over {len(times[k])} steps")
    common = {"steps_per_side": len(times["hf"]), "batch": BATCH}
    record(
        "train_step_vs_hf_baseline",
        round(med["vlm-swap"] / med["hf"], 3),
        goal="<= 1.05",
        vlm_swap_step_ms=round(med["vlm-swap"] * 1000, 1),
        hf_step_ms=round(med["hf"] * 1000, 1),
        **common,
    )
    for name, prefix, encoder in (
        ("feature_cache_speedup", "", "encoder"),
        ("feature_cache_speedup_perceiver", "perceiver-", "perceiver"),
    ):
        uncached, cached = med[f"{prefix}cache-off"], med[f"{prefix}cache-on"]
        record(
            name,
            round(uncached / cached, 3),
            goal=f"> 1 (stage with a frozen {encoder})",
            uncached_step_ms=round(uncached * 1000, 1),
            cached_step_ms=round(cached * 1000, 1),
            **common,
        )


if __name__ == "__main__":
    main()
