"""Every LLM family: placeholder insertion, pad != eos, and loss masking at the token level."""

from __future__ import annotations

import pytest
import torch

import vlm_swap
from vlm_swap.data import IGNORE, Sample, SampleEncoder
from vlm_swap.llms import LLMS, detect_family

from .helpers import ask

# family -> the end-of-turn text the answer's labels must end with
FAMILIES = {
    "qwen3": "<|im_end|>\n",
    "qwen2": "<|im_end|>\n",
    "llama3": "<|eot_id|>",
    "llama2": "</s>",
    "mistral": "</s>",
    "gemma2": "<end_of_turn>\n",
    "gemma3": "<end_of_turn>\n",
}


def test_every_registered_family_is_tested():
    assert set(LLMS.ids()) == set(FAMILIES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("kind", ["perceiver", "hf-vit"])
def test_placeholders_pad_and_loss_mask(tmp_path, bare_llm, perceiver, vit, images, family, kind):
    llm = bare_llm(family)
    enc = f"perceiver:{perceiver()}" if kind == "perceiver" else f"hf-vit:{vit('siglip')}"
    out = vlm_swap.build(str(llm), enc, tmp_path / "o")
    model, processor = vlm_swap.load(out)
    tok = processor.tokenizer
    fam = LLMS.get(family)
    assert detect_family(model.config.text_config.model_type, tok.get_vocab()) is fam
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id

    inputs = processor(images=images[:1], text=ask(processor, 1), add_special_tokens=False, return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    image_id = tok.convert_tokens_to_ids(fam.image_token)
    assert processor.image_token == fam.image_token and model.config.image_token_id == image_id
    n = ids.count(image_id)
    if kind == "perceiver":  # vs + N image tokens + ve, contiguous, overwritten by N + 2 perceiver rows
        vs, ve = tok.convert_tokens_to_ids(fam.vision_start), tok.convert_tokens_to_ids(fam.vision_end)
        s = ids.index(vs)
        assert ids[s + 1 : s + 1 + n] == [image_id] * n and ids[s + 1 + n] == ve
        assert ids.count(vs) == 1 and ids.count(ve) == 1
        assert n == int(inputs["image_grid_thw"][0].prod()) // 4
    else:
        assert n == 16
    with torch.no_grad():
        assert model(**inputs).logits.shape[1] == len(ids)

    sample = Sample(
        1,
        [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color is it?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        ],
        [],
    )
    encoded = SampleEncoder(processor, 512, fam.empty_think)(sample, images=images[:1])
    labelled = [int(t) for t, lab in zip(encoded["input_ids"], encoded["labels"], strict=True) if lab != IGNORE]
    text = tok.decode(labelled)
    assert text.strip().startswith("red") and text.endswith(FAMILIES[family]), text
    assert (encoded["labels"][encoded["input_ids"] == image_id] == IGNORE).all()
