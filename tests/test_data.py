"""Data: both formats, loss only on answers, line-numbered errors, no truncation into images."""

from __future__ import annotations

import json

import pytest

import vlm_swap
from vlm_swap.data import IGNORE, Collator, DataError, Sample, SampleEncoder, load_dataset
from vlm_swap.zoo.world import write_dataset


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory, llava, perceiver):
    out = tmp_path_factory.mktemp("data") / "up"
    return vlm_swap.upgrade(str(llava("llama2", "clip")), f"perceiver:{perceiver()}", out)


def labelled_text(processor, enc):
    ids = [int(t) for t, lab in zip(enc["input_ids"], enc["labels"], strict=True) if lab != IGNORE]
    return processor.tokenizer.decode(ids)


@pytest.mark.parametrize("fmt", ["llava", "messages"])
def test_both_formats_train_only_on_the_answer(tmp_path, upgraded, fmt):
    _, processor = vlm_swap.load(upgraded)
    path = write_dataset(tmp_path, 4, seed=3, fmt=fmt)
    encoder = SampleEncoder(processor, 512)
    samples, report = load_dataset(path, tmp_path, encoder)
    assert report.kept == 4 and not report.bad
    rows = json.loads(path.read_text()) if fmt == "llava" else [json.loads(x) for x in path.read_text().splitlines()]
    for sample, row in zip(samples, rows, strict=True):
        enc = encoder(sample)
        answer = row["conversations"][1]["value"] if fmt == "llava" else row["messages"][1]["content"]
        # the answer as the template renders it ("ASSISTANT: {text} "), and the eos that ends the turn
        assert labelled_text(processor, enc) == f" {answer} </s>"
        placeholders = (enc["input_ids"] == processor.image_token_id).nonzero().flatten()
        assert len(placeholders) > 0 and (enc["labels"][placeholders] == IGNORE).all()


def test_empty_think_block_is_masked(tmp_path, bare_llm, vit):
    out = vlm_swap.build(str(bare_llm("qwen3")), f"hf-vit:{vit()}", tmp_path / "q3")
    _, processor = vlm_swap.load(out)
    sample = Sample(
        1,
        [
            {"role": "user", "content": [{"type": "text", "text": "how many shapes are there?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "<think>\n\n</think>\n\ntwo"}]},
        ],
        [],
    )
    enc = SampleEncoder(processor, 256, empty_think="<think>\n\n</think>\n\n")(sample)
    assert labelled_text(processor, enc) == "two<|im_end|>\n"


def test_malformed_rows_are_reported_with_line_numbers(tmp_path, upgraded):
    _, processor = vlm_swap.load(upgraded)
    path = write_dataset(tmp_path, 1, seed=1, fmt="messages")
    good = path.read_text().strip()
    row = json.loads(good)
    two = {**row, "images": ["images/00000.png"]}  # a second image beside the one in the content
    no_placeholder = {
        "image": "images/00000.png",
        "conversations": [{"from": "human", "value": "what is it?"}, {"from": "gpt", "value": "red"}],
    }
    missing = {
        "image": "images/nope.png",
        "conversations": [{"from": "human", "value": "<image>\nwhat is it?"}, {"from": "gpt", "value": "red"}],
    }
    lines = [good, "{not json", json.dumps(missing), json.dumps(no_placeholder), json.dumps(two)]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        load_dataset(path, tmp_path, SampleEncoder(processor, 512))
    msg = str(err.value)
    assert "4 bad rows" in msg
    assert "line 2: bad JSON" in msg
    assert "line 3: missing image images/nope.png" in msg
    assert "line 4: the row has an image but no <image> placeholder" in msg
    assert "line 5: 1 image placeholders but 2 images" in msg
    samples, report = load_dataset(path, tmp_path, SampleEncoder(processor, 512), on_bad_rows="skip")
    assert len(samples) == 1 and [n for n, _ in report.bad] == [2, 3, 4, 5]


def test_two_images_where_one_is_allowed(tmp_path, upgraded):
    _, processor = vlm_swap.load(upgraded)
    write_dataset(tmp_path, 2, seed=1)
    path = tmp_path / "two.jsonl"
    path.write_text(
        json.dumps(
            {
                "image": ["images/00000.png", "images/00001.png"],
                "conversations": [{"from": "human", "value": "<image><image>\nsame?"}, {"from": "gpt", "value": "no"}],
            }
        )
        + "\n"
    )
    with pytest.raises(DataError, match="line 1: 2 images where at most 1 allowed"):
        load_dataset(path, tmp_path, SampleEncoder(processor, 512))
    samples, _ = load_dataset(path, tmp_path, SampleEncoder(processor, 512), max_images=2)
    assert len(samples) == 1


def test_too_long_samples_are_dropped_not_truncated(tmp_path, upgraded):
    _, processor = vlm_swap.load(upgraded)
    path = write_dataset(tmp_path, 3, seed=2)
    with pytest.raises(DataError, match=r"no usable rows .*3 too long \(dropped: line 1, 2, 3\)"):
        load_dataset(path, tmp_path, SampleEncoder(processor, 12))
    long_answer = tmp_path / "long.json"
    rows = json.loads(path.read_text())
    rows[0]["conversations"][1]["value"] = "red " * 200
    long_answer.write_text(json.dumps(rows))
    encoder = SampleEncoder(processor, 64)
    samples, report = load_dataset(long_answer, tmp_path, encoder)
    enc = encoder(samples[0])
    assert enc["input_ids"].shape[0] == 64  # the answer is cut, the image tokens are whole
    assert report.too_long == []


def test_collator_pads_right_and_concatenates_images(tmp_path, upgraded):
    _, processor = vlm_swap.load(upgraded)
    path = write_dataset(tmp_path, 3, seed=5)
    encoder = SampleEncoder(processor, 512)
    samples, _ = load_dataset(path, tmp_path, encoder)
    feats = [encoder(s) for s in samples]
    batch = Collator(processor.tokenizer.pad_token_id)(feats)
    lengths = [f["input_ids"].shape[0] for f in feats]
    assert batch["input_ids"].shape == (3, max(lengths))
    for i, n in enumerate(lengths):
        assert batch["attention_mask"][i].sum() == n and (batch["labels"][i, n:] == IGNORE).all()
    assert batch["image_grid_thw"].shape == (3, 3)
    assert batch["pixel_values"].shape[0] == sum(f["pixel_values"].shape[0] for f in feats)


def test_a_worker_collates_the_batch_the_main_process_would(tmp_path, upgraded):
    import torch

    from vlm_swap.data import EpochSampler, SwapDataset

    _, processor = vlm_swap.load(upgraded)
    path = write_dataset(tmp_path, 6, seed=7)
    encoder = SampleEncoder(processor, 512)
    samples, _ = load_dataset(path, tmp_path, encoder)
    dataset = SwapDataset(samples, encoder)
    collate = Collator(processor.tokenizer.pad_token_id)

    def batches(workers):
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=3, sampler=EpochSampler(len(dataset), 0), collate_fn=collate, num_workers=workers
        )
        return list(loader)

    here, there = batches(0), batches(1)
    assert len(here) == len(there) == 2
    for a, b in zip(here, there, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
