"""Every perceiver family returns exactly the small VLM's last-layer states at its image span."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from vlm_swap.backends.base import LoadOptions
from vlm_swap.backends.perceiver import DEFAULT_SYSTEM_PROMPT, PerceiverBackend
from vlm_swap.errors import VlmSwapError
from vlm_swap.format.perceiver import PERCEIVER_FAMILIES, PerceiverProcessing, check_family

FAMILIES = ["qwen3_vl", "qwen2_5_vl", "qwen2_vl", "idefics3", "llava_onevision", "gemma3"]


@pytest.fixture(scope="module")
def loaded_perceivers(perceiver):
    cache = {}

    def get(family):
        if family not in cache:
            path = perceiver(family)
            loaded = PerceiverBackend.load(str(path), LoadOptions())
            loaded.module.eval()
            cache[family] = (path, loaded)
        return cache[family]

    return get


def encode(loaded, images):
    enc = loaded.module
    inputs = enc.processing.preprocess(loaded.image_processor, images, enc.args, return_tensors="pt")
    with torch.no_grad():
        return enc(**inputs), inputs


def span_positions(family: str, ids: list[int], config) -> tuple[int, int]:
    """First and last position of the image span, found independently of the encoder's own code."""
    if family.startswith("qwen"):
        return ids.index(config.vision_start_token_id), ids.index(config.vision_end_token_id)
    if family == "gemma3":
        return ids.index(config.boi_token_index), ids.index(config.eoi_token_index)
    marker = config.image_token_id
    if family == "idefics3":
        marker = ids[ids.index(config.image_token_id) - 2]  # <fake_token_around_image> <row/global tag> <image>
    pos = [i for i, t in enumerate(ids) if t == marker]
    return pos[0], pos[-1]


@pytest.mark.parametrize("family", FAMILIES)
def test_features_equal_full_model_states_and_ignore_the_question(loaded_perceivers, images, family):
    path, loaded = loaded_perceivers(family)
    processor = AutoProcessor.from_pretrained(path)
    full = AutoModelForImageTextToText.from_pretrained(path).eval()
    messages = [
        {"role": "system", "content": [{"type": "text", "text": DEFAULT_SYSTEM_PROMPT}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "how many shapes are there?"}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    for image in images:  # wide, tall and square images: different grids / tile splits
        rows, inputs = encode(loaded, [image])
        # The naive way: the whole small VLM on [system, image, question] through its own processor, all hidden states.
        batch = processor(images=[image], text=[text], return_tensors="pt")
        with torch.no_grad():
            out = full(**batch, output_hidden_states=True)
        ids = batch["input_ids"][0].tolist()
        s, e = span_positions(family, ids, full.config)
        naive = out.hidden_states[-1][0, s : e + 1]
        boundary = 2 if PERCEIVER_FAMILIES[family].boundaries else 0
        assert rows.shape == (e + 1 - s, full.config.get_text_config().hidden_size)
        assert PerceiverProcessing.image_rows(inputs, 0, loaded.module.args) == e + 1 - s - boundary
        torch.testing.assert_close(rows, naive, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_of_different_sizes_equals_one_by_one(loaded_perceivers, images, family):
    _, loaded = loaded_perceivers(family)
    together, inputs = encode(loaded, images)
    alone = torch.cat([encode(loaded, [im])[0] for im in images])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    boundary = 2 if loaded.module.uses_boundaries else 0
    counts = [PerceiverProcessing.image_rows(inputs, i, loaded.module.args) + boundary for i in range(len(images))]
    assert sum(counts) == together.shape[0]


def test_family_rules_predict_the_row_counts(loaded_perceivers, images):
    """The counts follow each family's resolution rule (images: 96x64, 64x128, 160x160)."""
    grids = {}
    for family in ("idefics3", "gemma3", "llava_onevision"):
        _, loaded = loaded_perceivers(family)
        inputs = loaded.module.processing.preprocess(
            loaded.image_processor, images, loaded.module.args, return_tensors="pt"
        )
        grids[family] = (inputs, [PerceiverProcessing.image_rows(inputs, i, loaded.module.args) for i in range(3)])
    # Idefics3: longest edge resized to 64, 32 px tiles of 4 tokens, then a global view; "\n" after each row
    inputs, rows = grids["idefics3"]
    assert inputs["tile_grid"].tolist() == [[2, 2], [2, 1], [2, 2]]
    # span = tiles x (marker + tag + 4) + "\n" + "\n\n" + (marker + global tag + 4 + marker); rows drop 2 markers
    tok = AutoProcessor.from_pretrained(loaded_perceivers("idefics3")[0]).tokenizer
    newlines = len(tok("\n", add_special_tokens=False)["input_ids"]) + len(
        tok("\n\n", add_special_tokens=False)["input_ids"]
    )
    assert rows == [t * 6 + newlines + 7 - 2 for t in (4, 2, 4)]
    # Gemma 3: a fixed count whatever the size
    assert grids["gemma3"][1] == [4, 4, 4]
    # LLaVA-OneVision: base 2x2 + the unpadded anyres grid (2 feature rows per view) + one newline per grid row
    inputs, rows = grids["llava_onevision"]
    assert inputs["image_sizes"].tolist() == [[64, 96], [128, 64], [160, 160]]
    assert rows[2] == 4 + 4 * 4 + 4  # square: a 2 x 2 grid of views -> 4 x 4 features, 4 newlines
    assert rows[0] == 4 + 2 * 4 + 2  # wide 96 x 64 on a 2 x 2 grid: 4 x 4 features unpadded to 2 x 4
    assert rows[1] == 4 + 4 * 2 + 4  # tall 64 x 128 on a 2 x 1 grid: 4 x 2 features, nothing to unpad


def test_special_tokens_come_from_the_perceiver_config(loaded_perceivers):
    _, loaded = loaded_perceivers("qwen3_vl")
    cfg = loaded.config
    assert loaded.module.args["vision_start_id"] == cfg.vision_start_token_id
    assert loaded.module.args["vision_end_id"] == cfg.vision_end_token_id
    assert loaded.module.args["image_token_id"] == cfg.image_token_id
    assert cfg.vision_start_token_id not in loaded.module.args["prefix_ids"]
    _, smol = loaded_perceivers("idefics3")
    tok = AutoProcessor.from_pretrained(_).tokenizer
    assert smol.module.args["fake_id"] == tok.convert_tokens_to_ids("<fake_token_around_image>")
    assert smol.module.args["global_id"] == tok.convert_tokens_to_ids("<global-img>")
    assert smol.module.args["row_col_ids"][1][0] == tok.convert_tokens_to_ids("<row_2_col_1>")
    _, gemma = loaded_perceivers("gemma3")
    assert gemma.module.args["vision_start_id"] == gemma.config.boi_token_index
    assert gemma.module.args["tokens_per_image"] == gemma.config.mm_tokens_per_image


def test_unsupported_family_is_refused():
    from transformers import LlavaConfig

    with pytest.raises(VlmSwapError, match="perceiver family 'llava' is not supported.*idefics3.*llava_onevision"):
        check_family(LlavaConfig())


def test_a_checkpoint_of_another_family_is_refused_on_load(llava):
    with pytest.raises(VlmSwapError, match="perceiver family 'llava' is not supported"):
        PerceiverBackend.load(str(llava()), LoadOptions())


def test_a_model_type_transformers_cannot_load_is_refused(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "not_a_real_vlm", "hidden_size": 8}))
    with pytest.raises(VlmSwapError, match="cannot read the config.*perceiver families supported: gemma3"):
        PerceiverBackend.load(str(tmp_path), LoadOptions())
