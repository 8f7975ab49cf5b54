"""The frozen-encoder feature cache: same losses as without it, fewer encoder forwards, invalidation.

Encoder forwards are counted with a global forward hook on every encoder backend module.
"""

from __future__ import annotations

import json

import pytest
import torch

import vlm_swap
from vlm_swap.data import Collator, Sample, SampleEncoder
from vlm_swap.format.encoder import EncoderModule
from vlm_swap.train.features import FeatureCache, content_key, fingerprint
from vlm_swap.train.run import train
from vlm_swap.zoo.world import write_dataset

# 8 samples, batch 4: stage 1 sees the data twice, stage 2 twice more; the encoder is frozen in both
SETTINGS = [
    "stages.align.steps=4",
    "stages.lora.steps=4",
    "stages.align.batch_size=4",
    "stages.lora.batch_size=4",
    "stages.align.save_steps=100",
    "stages.lora.save_steps=100",
    "stages.align.logging_steps=1",
    "stages.lora.logging_steps=1",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, llava, perceiver):
    root = tmp_path_factory.mktemp("cache")
    up = vlm_swap.upgrade(str(llava("qwen3", "clip")), f"perceiver:{perceiver()}", root / "up")
    data = write_dataset(root / "data", 8, seed=5)
    return root, up, data


def _run(setup, name, cache: bool):
    root, up, data = setup
    calls = []

    def count(module, args, output):
        if isinstance(module, EncoderModule):
            calls.append(1)

    handle = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        overrides = [*SETTINGS, f"stages.align.cache_features={str(cache).lower()}"]
        overrides.append(f"stages.lora.cache_features={str(cache).lower()}")
        run = train("tiny-cpu", up, data, root / name, images=data.parent, overrides=overrides, progress=False)
    finally:
        handle.remove()
    losses = []
    for stage in ("stage-1-align", "stage-2-lora"):
        history = json.loads((run / stage / "final" / "log_history.json").read_text())
        losses += [e["loss"] for e in history if "loss" in e]
    return losses, len(calls), json.loads((run / "run.json").read_text())


def test_cached_and_uncached_training_give_the_same_losses(setup):
    plain, plain_forwards, _ = _run(setup, "plain", cache=False)
    cached, cached_forwards, summary = _run(setup, "cached", cache=True)
    assert len(plain) == len(cached) == 8
    torch.testing.assert_close(torch.tensor(cached), torch.tensor(plain), rtol=1e-5, atol=1e-6)
    assert cached[:2] == plain[:2]  # the first pass over the data is the uncached computation itself
    assert plain_forwards == 8  # one encoder forward per step
    assert cached_forwards == 2  # only the first pass over the data, reused across steps and stages
    align, lora = (s["feature_cache"] for s in summary["stages"])
    assert (align["misses"], align["hits"]) == (8, 8)
    assert (lora["misses"], lora["hits"]) == (0, 16)


def test_new_encoder_weights_or_preprocessing_miss_the_cache(setup, images):
    _, up, _ = setup
    model, processor = vlm_swap.load(up)
    encoder = SampleEncoder(processor, 256)
    before = fingerprint(model)
    cache = FeatureCache(2**20)
    cache.bind(model)
    cache.entries["k"] = torch.zeros(1, 2)
    cache.bind(model)
    assert "k" in cache.entries  # same weights: entries kept across stages
    with torch.no_grad():
        next(model.encoder.parameters())[0].add_(1.0)
    assert fingerprint(model) != before
    cache.bind(model)
    assert cache.entries == {}

    sample = Sample(1, [{"role": "user", "content": [{"type": "image"}]}, _answer()], [])
    image_keys = [k for k in encoder(sample, images=images[:1]) if k not in ("input_ids", "labels")]
    key = content_key({k: encoder(sample, images=images[:1])[k] for k in image_keys})
    assert content_key({k: encoder(sample, images=images[:1])[k] for k in image_keys}) == key
    processor.image_processor.image_mean = [0.0, 0.0, 0.0]  # another normalisation: other pixel inputs
    other = encoder(sample, images=images[:1])
    assert content_key({k: other[k] for k in image_keys}) != key


def test_collator_keys_samples_by_image_content(setup, images):
    _, up, _ = setup
    _, processor = vlm_swap.load(up)
    encoder = SampleEncoder(processor, 256)
    sample = Sample(1, [{"role": "user", "content": [{"type": "image"}]}, _answer()], [])
    a, b, c = (encoder(sample, images=[im]) for im in (images[0], images[1], images[0]))
    batch = Collator(processor.tokenizer.pad_token_id, feature_keys=True)([a, b, c])
    keys = batch["feature_keys"]
    assert keys[0] == keys[2] != keys[1]


def _answer() -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": "red"}]}
