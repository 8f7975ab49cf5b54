"""Regenerate the embedded pretrained tiny models: ``python -m vlm_swap.zoo.pretrain``.

Trains, on the synthetic world, (1) the tiny llava-hf VLM that plays the user's existing model,
so that it answers the world's questions about images and, with no image, about scenes told in
words (the text-only task on which ``vlm-swap compare --embedded`` measures forgetting), and (2)
the tiny Qwen3-VL small VLM used as the perceiver, so that its image states describe the image.
Both use the HF Trainer and the same data pipeline as ``vlm-swap train``; the result is
deterministic for a given seed, torch version and machine, and is committed under
``vlm_swap/zoo/pretrained/``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from ..data import Collator, SampleEncoder, SwapDataset, load_dataset
from ..evaluation import qa_accuracy
from . import PRETRAINED
from .models import build_llava
from .perceivers import build_perceiver
from .world import write_dataset


class _WithTokenTypes(Collator):
    """Qwen-VL models need ``mm_token_type_ids`` (1 at image placeholders) for their M-RoPE."""

    def __init__(self, pad_token_id: int, image_token_id: int):
        super().__init__(pad_token_id)
        self.image_token_id = image_token_id

    def __call__(self, features):
        batch = super().__call__(features)
        batch["mm_token_type_ids"] = (batch["input_ids"] == self.image_token_id).int()
        return batch


def pretrain(
    path: Path, data_dirs: list[Path], eval_dirs: list[Path], *, steps: int, lr: float, seed: int, token_types: bool
):
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    encoder = SampleEncoder(processor, 512)
    samples = [s for d in data_dirs for s in load_dataset(d / "data.json", d, encoder)[0]]
    collator = (
        _WithTokenTypes(processor.tokenizer.pad_token_id, processor.image_token_id)
        if token_types
        else Collator(processor.tokenizer.pad_token_id)
    )
    args = TrainingArguments(
        output_dir=str(path.parent / f".{path.name}-trainer"),
        max_steps=steps,
        per_device_train_batch_size=32,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        weight_decay=0.01,
        seed=seed,
        data_seed=seed,
        save_strategy="no",
        report_to="none",
        logging_steps=50,
        disable_tqdm=True,
        remove_unused_columns=False,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=SwapDataset(samples, encoder), data_collator=collator)
    trainer.remove_callback(PrinterCallback)
    result = trainer.train()
    shutil.rmtree(args.output_dir, ignore_errors=True)
    model.eval()
    accuracies = []
    for d in eval_dirs:
        held_out, _ = load_dataset(d / "data.json", d, encoder)
        accuracies.append(qa_accuracy(model, processor, held_out)["accuracy"])
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return result.training_loss, accuracies


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PRETRAINED)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--scenes", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_dataset(tmp / "qa", args.scenes, seed=100 + args.seed)
        write_dataset(tmp / "captions", args.scenes // 3, seed=500 + args.seed, captions=True)
        write_dataset(tmp / "words", args.scenes // 2, seed=700 + args.seed, words=True)
        write_dataset(tmp / "eval", 200, seed=900 + args.seed)
        write_dataset(tmp / "eval-words", 200, seed=950 + args.seed, words=True)
        llava = build_llava(tmp / "tiny-llava", llm="llama2", vision="clip", seed=args.seed)
        loss, (acc, text_acc) = pretrain(
            llava,
            [tmp / "qa", tmp / "words"],
            [tmp / "eval", tmp / "eval-words"],
            steps=args.steps,
            lr=1e-3,
            seed=args.seed,
            token_types=False,
        )
        print(f"tiny-llava: train loss {loss:.3f}, held-out accuracy {acc:.3f} (images), {text_acc:.3f} (words)")
        perceiver = build_perceiver(tmp / "tiny-qwen3-vl", family="qwen3_vl", seed=args.seed)
        loss, _ = pretrain(
            perceiver,
            [tmp / "qa", tmp / "captions"],
            [],
            steps=args.steps,
            lr=1e-3,
            seed=args.seed,
            token_types=True,
        )
        print(f"tiny-qwen3-vl: train loss {loss:.3f}")
        args.out.mkdir(parents=True, exist_ok=True)
        for name in ("tiny-llava", "tiny-qwen3-vl"):
            shutil.rmtree(args.out / name, ignore_errors=True)
            shutil.copytree(tmp / name, args.out / name)


if __name__ == "__main__":
    main()
