"""Packing: a packed batch trains exactly like the same samples unpacked; the plan fills rows; training packs.

And resuming: a resumed stage decodes no sample of the steps it skips.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

import vlm_swap
from vlm_swap.data import Collator, EpochSampler, Packs, SampleEncoder, SwapDataset, load_dataset
from vlm_swap.train.run import _empty_think, train
from vlm_swap.zoo.world import write_dataset


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("encoder", ["perceiver", "hf-vit"])
def test_a_packed_batch_has_the_loss_and_gradients_of_the_unpacked_one(tmp_path, llava, perceiver, vit, encoder):
    source = encoder_dir = {"perceiver": perceiver, "hf-vit": vit}[encoder]()
    up = vlm_swap.upgrade(str(llava("llama2", "clip")), f"{encoder}:{source}", tmp_path / "up")
    del encoder_dir
    model, processor = vlm_swap.load(up, dtype=torch.float32)
    data = write_dataset(tmp_path / "d", 5, seed=4, captions=True)
    encoder_ = SampleEncoder(processor, 4096)
    samples, _ = load_dataset(data, data.parent, encoder_)
    feats = [encoder_(s) for s in samples]
    collate = Collator(processor.tokenizer.pad_token_id)
    padded = collate(feats)
    packed = collate([feats[:3], feats[3:]])  # two rows: three samples, then two
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] == 2
    starts = [0, *np.cumsum([len(f["input_ids"]) for f in feats[:3]])[:-1]]
    assert packed["position_ids"][0, starts].tolist() == [0, 0, 0]  # position ids restart per sample
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    loss, grads = _loss_and_grads(model, padded)
    packed_loss, packed_grads = _loss_and_grads(model, packed)
    torch.testing.assert_close(packed_loss, loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == packed_grads.keys() and any(n.startswith("encoder.") for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    # without restarting position ids (one long sequence) the loss differs: the equality above is not trivial
    crossed = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1]).expand(2, -1))
    assert abs(float(_loss_and_grads(model, crossed)[0]) - float(loss)) > 1e-4


def test_the_plan_fills_rows_with_whole_samples():
    lengths = np.random.default_rng(0).integers(200, 420, size=5000)
    packs = Packs(lengths, 2048)
    assert sorted(np.concatenate([packs[p] for p in range(len(packs))]).tolist()) == list(range(5000))
    assert all(lengths[packs[p]].sum() <= 2048 for p in range(len(packs)))
    assert packs.lengths.tolist() == [int(lengths[packs[p]].sum()) for p in range(len(packs))]
    assert packs.utilization > 0.95
    with pytest.raises(ValueError, match="does not fit"):
        Packs(np.array([10, 3000]), 2048)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, llava, perceiver):
    root = tmp_path_factory.mktemp("pack")
    up = vlm_swap.upgrade(str(llava("qwen3", "clip")), f"perceiver:{perceiver()}", root / "up")
    return root, up, write_dataset(root / "data", 24, seed=12)


ONE_STAGE = [
    "stages.lora.steps=1",
    "stages.align.steps=4",
    "stages.align.batch_size=2",
    "stages.align.save_steps=2",
    "stages.align.logging_steps=1",
    "dataloader_workers=0",
]


def test_training_packs_samples(setup):
    root, up, data = setup
    packed = [*ONE_STAGE, "stages.align.packing=true", "stages.align.max_length=512", "dataloader_workers=1"]
    run = train("tiny-cpu", up, data, root / "packed", images=data.parent, progress=False, overrides=packed)
    align = json.loads((run / "run.json").read_text())["stages"][0]
    assert align["steps"] == 4 and align["packing_utilization"] > 0.5
    # each step trains 2 rows of several samples, decoded in a worker process (its count comes back)
    assert align["samples_decoded"] > 4 * 2 * 2 and align["undecodable"] == 0


class _StopAfter(TrainerCallback):
    """Ends the process's training at a step, as a kill would (the checkpoint before it is complete)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_resuming_decodes_no_sample_of_the_skipped_steps(setup):
    root, up, data = setup
    out = root / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train("tiny-cpu", up, data, out, images=data.parent, overrides=ONE_STAGE, progress=False,
              callbacks=[_StopAfter(3)])  # fmt: skip
    assert (out / "stage-1-align" / "checkpoint-2").is_dir()
    train("tiny-cpu", up, data, out, images=data.parent, overrides=ONE_STAGE, progress=False, resume=True)
    align = json.loads((out / "run.json").read_text())["stages"][0]
    assert align["resumed_from"].endswith("checkpoint-2") and align["steps"] == 4
    full = train("tiny-cpu", up, data, root / "uninterrupted", images=data.parent, overrides=ONE_STAGE, progress=False)
    whole = json.loads((full / "run.json").read_text())["stages"][0]
    # accelerate's dataloader fetches one batch ahead (to know the last one): 4 steps + 1 batch, 2 samples each
    assert whole["samples_decoded"] == (4 + 1) * 2
    assert align["samples_decoded"] == whole["samples_decoded"] - 2 * 2  # nothing of the 2 skipped steps
    losses = [json.loads((r / "stage-1-align" / "final" / "log_history.json").read_text()) for r in (out, full)]
    last = [[e["loss"] for e in h if "loss" in e][-1] for h in losses]
    assert last[0] == pytest.approx(last[1], rel=1e-5)  # the resumed run saw the batches the full run saw


def test_a_dataset_of_packs_gives_whole_samples(setup):
    _, up, data = setup
    _, processor = vlm_swap.load(up)
    encoder = SampleEncoder(processor, 512)
    samples, _ = load_dataset(data, data.parent, encoder)
    dataset = SwapDataset(samples, encoder)
    dataset.set_packing(True)
    assert len(dataset) < len(samples) and int(dataset.lengths.sum()) == int(dataset.sample_lengths.sum())
    row = dataset[0]
    assert [len(f["input_ids"]) for f in row] == [int(dataset.sample_lengths[i]) for i in dataset.packs[0]]


def test_the_order_comes_from_the_seed_and_the_epoch_alone():
    sampler = EpochSampler(1000, 7)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(first) == list(range(1000)) and first != second
    assert list(EpochSampler(1000, 7)) == first  # a new process (a resumed run) draws the same order
    lengths = np.random.default_rng(1).integers(10, 500, size=1000)
    grouped = list(EpochSampler(1000, 7, lengths=lengths, group=4))
    assert sorted(grouped) == list(range(1000))
    spread = [np.ptp(lengths[grouped[i : i + 4]]) for i in range(0, 1000, 4)]
    shuffled = [np.ptp(lengths[first[i : i + 4]]) for i in range(0, 1000, 4)]
    assert np.mean(spread) < 0.2 * np.mean(shuffled)  # batches of similar lengths


def test_samples_that_fail_to_decode_in_training_are_skipped_and_reported(setup, tmp_path):
    root, up, _ = setup
    data = write_dataset(tmp_path / "data", 12, seed=13)
    _, processor = vlm_swap.load(up)
    think = _empty_think(up)  # the encoder train() builds, so that it finds this index in the cache
    load_dataset(data, data.parent, SampleEncoder(processor, 256, think))  # the index is built (and cached) now
    for image in sorted((data.parent / "images").iterdir())[::2]:  # then half the images break
        image.write_bytes(image.read_bytes()[:40])
    run = train("tiny-cpu", up, data, tmp_path / "run", images=data.parent, overrides=ONE_STAGE, progress=False)
    summary = json.loads((run / "run.json").read_text())
    align = summary["stages"][0]
    assert align["steps"] == 4 and align["undecodable"] > 0
    assert summary["data_report"]["undecodable"] == align["undecodable"] + summary["stages"][1]["undecodable"]
