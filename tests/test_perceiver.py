"""The perceiver returns exactly the small VLM's last-layer states at vision-start..vision-end."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from vlm_swap.encoders import PerceiverEncoder
from vlm_swap.encoders.perceiver import DEFAULT_SYSTEM_PROMPT, check_family
from vlm_swap.errors import VlmSwapError


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl"])
def test_features_equal_full_model_states_and_ignore_the_question(perceiver, images, family):
    path = perceiver(family)
    loaded = PerceiverEncoder.load(str(path), dtype=None, trust_remote_code=False)
    enc = loaded.module.eval()
    processor = AutoProcessor.from_pretrained(path)
    full = AutoModelForImageTextToText.from_pretrained(path).eval()

    image = images[2]
    inputs = loaded.image_processor([image], return_tensors="pt")
    with torch.no_grad():
        rows = enc(**inputs)  # [N + 2, D]
    n = int(inputs["image_grid_thw"][0].prod()) // 4
    assert rows.shape == (n + 2, full.config.text_config.hidden_size)

    # The naive way: the whole small VLM on [system, image, question], all hidden states, LM head.
    messages = [
        {"role": "system", "content": [{"type": "text", "text": DEFAULT_SYSTEM_PROMPT}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "how many shapes are there?"}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    batch = processor(images=[image], text=[text], return_tensors="pt")
    with torch.no_grad():
        out = full(**batch, output_hidden_states=True)
    ids = batch["input_ids"][0].tolist()
    s = ids.index(full.config.vision_start_token_id)
    e = ids.index(full.config.vision_end_token_id)
    naive = out.hidden_states[-1][0, s : e + 1]
    torch.testing.assert_close(rows, naive, atol=1e-5, rtol=1e-5)


def test_batch_of_different_sizes_equals_one_by_one(perceiver, images):
    loaded = PerceiverEncoder.load(str(perceiver()), dtype=None, trust_remote_code=False)
    enc = loaded.module.eval()
    with torch.no_grad():
        together = enc(**loaded.image_processor(images, return_tensors="pt"))
        alone = torch.cat([enc(**loaded.image_processor([im], return_tensors="pt")) for im in images])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_special_tokens_come_from_the_perceiver_config(perceiver):
    loaded = PerceiverEncoder.load(str(perceiver()), dtype=None, trust_remote_code=False)
    cfg = loaded.config
    assert loaded.module.args["vision_start_id"] == cfg.vision_start_token_id
    assert loaded.module.args["vision_end_id"] == cfg.vision_end_token_id
    assert loaded.module.args["image_token_id"] == cfg.image_token_id
    assert cfg.vision_start_token_id not in loaded.module.args["prefix_ids"]


def test_unsupported_family_is_refused():
    from transformers import LlavaConfig

    with pytest.raises(VlmSwapError, match="perceiver family 'llava' is not supported"):
        check_family(LlavaConfig())
