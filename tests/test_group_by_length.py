"""Length-grouped batches: the Trainer's real dataloader pads less with ``group_by_length`` than without."""

from __future__ import annotations

import json

import pytest

import vlm_swap
from vlm_swap.data import Collator, SampleEncoder, SwapDataset, load_dataset, padding_fraction
from vlm_swap.train.engine import SwapTrainer, training_arguments
from vlm_swap.train.recipe import Stage
from vlm_swap.zoo.world import write_dataset


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, llava, perceiver):
    """Short questions and long captions about scenes of several sizes (perceiver rows vary per image)."""
    root = tmp_path_factory.mktemp("group")
    up = vlm_swap.upgrade(str(llava("qwen3", "clip")), f"perceiver:{perceiver()}", root / "up")
    questions = write_dataset(root / "q", 32, seed=1)
    captions = write_dataset(root / "c", 32, seed=2, captions=True)
    rows = []
    for path in (questions, captions):
        for row in json.loads(path.read_text()):
            row["image"] = str(path.parent / row["image"])
            rows.append(row)
    data = root / "mixed.json"
    data.write_text(json.dumps(rows))
    model, processor = vlm_swap.load(up)
    encoder = SampleEncoder(processor, 512)
    samples, _ = load_dataset(data, None, encoder)
    return model, SwapDataset(samples, encoder), Collator(processor.tokenizer.pad_token_id)


def _padding(mixed, tmp_path, grouped: bool) -> float:
    model, dataset, collator = mixed
    stage = Stage(steps=8, batch_size=4, group_by_length=grouped, precision="fp32", max_length=512)
    args = training_arguments(stage, tmp_path, report_to="none")
    trainer = SwapTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator, stage=stage)
    return padding_fraction(trainer.get_train_dataloader())


def test_lengths_are_known_from_validation(mixed):
    _, dataset, _ = mixed
    assert dataset.lengths.tolist() == [len(dataset[i]["input_ids"]) for i in range(len(dataset))]
    assert len(set(dataset.lengths)) > 5


def test_grouping_by_length_pads_less(mixed, tmp_path):
    random_order = _padding(mixed, tmp_path / "random", grouped=False)
    grouped = _padding(mixed, tmp_path / "grouped", grouped=True)
    assert random_order > 0.05
    assert grouped < 0.5 * random_order
