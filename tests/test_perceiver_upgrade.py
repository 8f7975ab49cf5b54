"""Upgrading a llava-hf source with each perceiver family: reload, feature rows, generation."""

from __future__ import annotations

import pytest
import torch

import vlm_swap

from .helpers import ask

FAMILIES = ["idefics3", "llava_onevision", "gemma3", "qwen2_5_vl", "qwen2_vl"]


@pytest.mark.parametrize("family", FAMILIES)
def test_upgrade_with_family_reload_generate(tmp_path, llava, perceiver, images, family):
    out = vlm_swap.upgrade(str(llava("llama2", "clip")), f"perceiver:{perceiver(family)}", tmp_path / "o")
    model, processor = vlm_swap.load(out)
    assert model.encoder.family.model_types[0] == family
    assert not hasattr(model.encoder.model, "lm_head")

    # Two images of different sizes in one prompt: placeholders == feature rows == the family's row counts.
    pics = images[1:]
    inputs = processor(images=pics, text=ask(processor, 2), return_tensors="pt")
    image_inputs = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    boundary = 2 if model.encoder.uses_boundaries else 0
    rows = [model.encoder.processing.image_rows(image_inputs, i, model.encoder.args) + boundary for i in range(2)]
    n_placeholders = int(torch.isin(inputs["input_ids"], torch.tensor(model.config.feature_token_ids)).sum())
    with torch.no_grad():
        feats = model.get_image_features(**image_inputs)
        alone = torch.cat(
            [
                model.encoder(
                    **model.encoder.processing.preprocess(
                        processor.image_processor, [im], model.encoder.args, return_tensors="pt"
                    )
                )
                for im in pics
            ]
        )
    assert feats.shape == (sum(rows), model.config.text_config.hidden_size) and n_placeholders == sum(rows)
    torch.testing.assert_close(feats, model.connector(alone), atol=1e-5, rtol=1e-5)
    assert len(model.config.feature_token_ids) == (3 if boundary else 1)

    gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] == inputs["input_ids"].shape[1] + 3
    with torch.no_grad():
        logits = model(**inputs).logits[:, -1]
    assert torch.equal(gen[:, inputs["input_ids"].shape[1]], logits.argmax(-1))


@pytest.mark.parametrize("family", ["idefics3", "llava_onevision"])
def test_training_batches_collate_across_tile_counts(tmp_path, llava, perceiver, images, family):
    """Samples whose images split into different numbers of tiles/views collate and give a finite loss."""
    from vlm_swap.data import Collator, Sample, SampleEncoder

    out = vlm_swap.upgrade(str(llava("llama2", "clip")), f"perceiver:{perceiver(family)}", tmp_path / "o")
    model, processor = vlm_swap.load(out)
    encoder = SampleEncoder(processor, max_length=4096)
    rows = []
    for i, image in enumerate(images):
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "a red circle"}]},
        ]
        rows.append(encoder(Sample(i, messages, []), images=[image]))
    batch = Collator(processor.tokenizer.pad_token_id)(rows)
    n_rows = int(torch.isin(batch["input_ids"], torch.tensor(model.config.feature_token_ids)).sum())
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    with torch.no_grad():
        feats = model.get_image_features(**{k: v for k, v in batch.items() if k in model.encoder.input_names})
    assert feats.shape[0] == n_rows
