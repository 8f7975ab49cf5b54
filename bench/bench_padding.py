"""Padding waste: pad tokens / all tokens in the training batches, random order against length-grouped.

The data is the demo's: the embedded tiny llava-hf model upgraded with the embedded Qwen3-VL perceiver
(image rows vary with the image size), and the demo's synthetic question rows
(``write_dataset(..., seed=1)``, the first ``--scenes`` of them), batched 16 as in the ``tiny-cpu``
recipe. Batches come from the real Trainer dataloader of a ``tiny-cpu`` stage with
``group_by_length`` off and on, over ``--epochs`` passes. The count is exact, not timed.

    python bench/bench_padding.py [--scenes 1000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record  # noqa: E402

import vlm_swap  # noqa: E402
from vlm_swap import zoo  # noqa: E402
from vlm_swap.data import Collator, SampleEncoder, SwapDataset, load_dataset, padding_fraction  # noqa: E402
from vlm_swap.train.engine import SwapTrainer, training_arguments  # noqa: E402
from vlm_swap.train.recipe import load_recipe  # noqa: E402


def batches(trainer: SwapTrainer, epochs: int):
    for _ in range(epochs):  # each pass draws a new order from the torch RNG the Trainer seeded
        yield from trainer.get_train_dataloader()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=1000, help="rows of the demo data")
    parser.add_argument("--epochs", type=int, default=3, help="passes over the data")
    opts = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = zoo.build_default(root / "models")
        up = vlm_swap.upgrade(str(models["source"]), f"perceiver:{models['perceiver']}", root / "up")
        data = zoo.write_dataset(root / "data", opts.scenes, seed=1)
        model, processor = vlm_swap.load(up)
        stage = load_recipe("tiny-cpu").stages[0]
        samples, _ = load_dataset(data, data.parent, SampleEncoder(processor, stage.max_length))
        dataset = SwapDataset(samples, SampleEncoder(processor, stage.max_length))
        collator = Collator(processor.tokenizer.pad_token_id)
        waste = {}
        for grouped in (False, True):
            st = dataclasses.replace(stage, group_by_length=grouped)
            args = training_arguments(st, root / f"run-{grouped}", report_to="none")
            trainer = SwapTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator, stage=st)
            waste[grouped] = padding_fraction(batches(trainer, opts.epochs))
    extra = {"batch": stage.batch_size, "rows": len(samples), "epochs": opts.epochs}
    record("padding_waste_random", round(waste[False], 4), goal="lower is better", **extra)
    record("padding_waste_grouped", round(waste[True], 4), goal="< padding_waste_random", **extra)


if __name__ == "__main__":
    main()
