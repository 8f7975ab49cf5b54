"""``perceiver`` at run time: a small VLM used as the vision encoder (Deep Pre-Alignment).

The small VLM's base model (no LM head) reads, per image, [prefix, image span]: the prefix is the
perceiver's own chat template for [system prompt, user turn holding the image] cut right before the
image span, and the span is the image as the family's processor writes it into a prompt. We keep
the last-layer hidden states (after the final norm) at the span's positions. Because attention is
causal and the image comes first, those rows depend only on the image, so the prefix token ids are
computed once at upgrade time (``encoder_args["prefix_ids"]``, ``vlm_swap.backends.perceiver``). The
base model's forward gets the image inputs, so the family's own embedding merge runs.

The span of each family (its module docstring has the details):

- Qwen3-VL / Qwen2.5-VL / Qwen2-VL: vision-start, N image tokens, vision-end (N + 2 rows).
- SmolVLM / Idefics3: first to last ``<fake_token_around_image>`` of the image, markers included.
- LLaVA-OneVision: the N ``<image>`` positions (no marker tokens: N rows, no boundary rows).
- Gemma 3: ``<start_of_image>``, N soft tokens, ``<end_of_image>`` (N + 2 rows).

With boundaries, the first and last span rows go to the target's vision-start/end placeholders
and the inner rows to its image placeholders. Families are listed in ``PERCEIVER_FAMILIES``, any
other model type is refused.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModel, PreTrainedConfig

from .encoder import EncoderModule, ImageProcessing
from .errors import VlmSwapError
from .perceiver_family import PerceiverFamily
from .perceiver_gemma3 import Gemma3
from .perceiver_idefics3 import Idefics3
from .perceiver_llava_onevision import LlavaOnevision
from .perceiver_qwen import Qwen2VL, Qwen3VL, Qwen25VL

PERCEIVER_FAMILIES: dict[str, type[PerceiverFamily]] = {
    t: fam for fam in (Qwen3VL, Qwen25VL, Qwen2VL, Idefics3, LlavaOnevision, Gemma3) for t in fam.model_types
}


def supported_families() -> str:
    names = sorted({f.name for f in PERCEIVER_FAMILIES.values()})
    return f"supported: {', '.join(sorted(PERCEIVER_FAMILIES))}; that is {', '.join(names)}"


def check_family(config: PreTrainedConfig) -> type[PerceiverFamily]:
    family = PERCEIVER_FAMILIES.get(config.model_type)
    if family is None:
        raise VlmSwapError(f"perceiver family {config.model_type!r} is not supported ({supported_families()})")
    return family


def family_of(args: dict[str, Any]) -> type[PerceiverFamily]:
    # models written before families were recorded are Qwen-style
    return PERCEIVER_FAMILIES[args.get("model_type", "qwen3_vl")]


class PerceiverProcessing(ImageProcessing):
    """The family's own preprocessing and row counts (``encoder_args["model_type"]`` names the family)."""

    @staticmethod
    def preprocess(image_processor, images: list, args: dict[str, Any], **kwargs) -> dict[str, torch.Tensor]:
        return family_of(args).preprocess(image_processor, list(images), args, **kwargs)

    @staticmethod
    def image_rows(image_inputs: dict[str, Any], index: int, args: dict[str, Any]) -> int:
        return family_of(args).image_rows(image_inputs, index, args)

    @classmethod
    def rows_for_size(cls, image_processor, height: int, width: int, args: dict[str, Any]) -> int:
        return family_of(args).rows_for_size(image_processor, height, width, args)

    @classmethod
    def size_independent(cls, image_processor, args: dict[str, Any]) -> bool:
        return family_of(args).size_independent(image_processor, args)


class PerceiverEncoder(EncoderModule):
    kind = "perceiver"
    processing = PerceiverProcessing
    input_names = tuple(dict.fromkeys(n for f in PERCEIVER_FAMILIES.values() for n in f.input_names))
    uses_boundaries = True

    def __init__(self, config: PreTrainedConfig, args: dict[str, Any], model=None):
        super().__init__(config, args)
        self.family = check_family(config)
        self.input_names = self.family.input_names
        self.uses_boundaries = self.family.boundaries
        self.model = model if model is not None else AutoModel.from_config(config)

    @property
    def feature_dim(self) -> int:
        return self.model.config.get_text_config().hidden_size

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        a, fam = self.args, self.family
        n = _count_images(inputs, fam)
        spans = [fam.span_ids(inputs, i, a) for i in range(n)]
        p = len(a["prefix_ids"])
        width = p + max(len(s) for s in spans)
        device = inputs["pixel_values"].device
        ids = torch.full((n, width), a["pad_id"], dtype=torch.long, device=device)
        mask = torch.zeros((n, width), dtype=torch.long, device=device)
        for i, span in enumerate(spans):
            ids[i, : p + len(span)] = torch.tensor(a["prefix_ids"] + span, device=device)
            mask[i, : p + len(span)] = 1
        extra = fam.model_inputs({k: inputs[k] for k in fam.input_names}, a)
        extra["pixel_values"] = extra["pixel_values"].to(self.model.dtype)
        if fam.token_types_name:
            extra[fam.token_types_name] = (ids == a["image_token_id"]).int() * mask
        out = self.model(input_ids=ids, attention_mask=mask, use_cache=False, **extra)
        hidden = out.last_hidden_state  # [n, width, D], after the final norm
        return torch.cat([hidden[i, p : p + len(s)] for i, s in enumerate(spans)])  # [sum(span_i), D]


def _count_images(inputs: dict[str, torch.Tensor], family: type[PerceiverFamily]) -> int:
    # the per-image input of each layout: a grid row, a size row, or one pixel view per image
    for key in ("image_grid_thw", "tile_grid", "image_sizes"):
        if key in family.input_names:
            return int(inputs[key].shape[0])
    return int(inputs["pixel_values"].shape[0])
