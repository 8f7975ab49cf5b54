"""``perceiver``: a small VLM used as the vision encoder (Deep Pre-Alignment).

The small VLM reads [system prompt, user turn holding the image] cut right after the image's
vision-end token, and we keep the last-layer hidden states (after the final norm) from the
vision-start to the vision-end token inclusive: ``N + 2`` rows per image. Because attention is
causal and the image comes first, those rows depend only on the image, so the prompt is fixed:
its token ids up to the vision-start token are computed once at upgrade time from the
perceiver's own chat template and stored (``prefix_ids``); at run time only the image count N
changes. Only the base model is kept (no LM head) and only the last hidden state is returned.

Special tokens come from the perceiver's config; families transformers loads natively are
listed in ``PERCEIVER_FAMILIES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModel, AutoProcessor, PreTrainedConfig

from ..errors import VlmSwapError
from .base import EncoderBackend, LoadedEncoder
from .loading import load_auto, load_config, load_pretrained

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
#: DPA trained with at most 262,144 pixels per image; the perceiver's processor is capped to it.
DEFAULT_MAX_PIXELS = 262_144


@dataclass(frozen=True)
class PerceiverFamily:
    """How one small-VLM family lays out an image in its prompt."""

    model_types: tuple[str, ...]
    name: str
    text_family: str  # LLM family of the perceiver's LM (for the "same family" pair check)


# Qwen-style families: <vision_start> <image_pad> * (t*h*w / merge^2) <vision_end>, M-RoPE positions.
PERCEIVER_FAMILIES: dict[str, PerceiverFamily] = {
    "qwen3_vl": PerceiverFamily(("qwen3_vl",), "Qwen3-VL", "qwen3"),
    "qwen2_5_vl": PerceiverFamily(("qwen2_5_vl",), "Qwen2.5-VL", "qwen2"),
    "qwen2_vl": PerceiverFamily(("qwen2_vl",), "Qwen2-VL", "qwen2"),
}


def check_family(config: PreTrainedConfig) -> PerceiverFamily:
    family = PERCEIVER_FAMILIES.get(config.model_type)
    if family is None:
        raise VlmSwapError(
            f"perceiver family {config.model_type!r} is not supported "
            f"(supported: {', '.join(sorted(PERCEIVER_FAMILIES))})"
        )
    return family


class PerceiverEncoder(EncoderBackend):
    kind = "perceiver"
    help = "a small VLM (Qwen3-VL, Qwen2.5-VL, ...) whose last-layer image states are the features (DPA)"
    input_names = ("pixel_values", "image_grid_thw")
    uses_boundaries = True

    def __init__(self, config: PreTrainedConfig, args: dict[str, Any], model=None):
        super().__init__(config, args)
        check_family(config)
        self.model = model if model is not None else AutoModel.from_config(config)

    @property
    def feature_dim(self) -> int:
        return self.model.config.get_text_config().hidden_size

    @staticmethod
    def image_rows(image_inputs: dict[str, Any], index: int, args: dict[str, Any]) -> int:
        grid = image_inputs["image_grid_thw"][index]
        return int(grid.prod()) // args["merge_size"] ** 2

    def forward(self, pixel_values, image_grid_thw, **_):
        a = self.args
        rows = image_grid_thw.prod(-1) // a["merge_size"] ** 2  # [n_images]
        prefix = torch.tensor(a["prefix_ids"], dtype=torch.long, device=image_grid_thw.device)
        p, n = len(a["prefix_ids"]), rows.shape[0]
        lengths = p + rows + 2
        width = int(lengths.max())
        ids = torch.full((n, width), a["pad_id"], dtype=torch.long, device=prefix.device)
        mask = torch.zeros((n, width), dtype=torch.long, device=prefix.device)
        types = torch.zeros((n, width), dtype=torch.int, device=prefix.device)
        for i, r in enumerate(rows.tolist()):
            ids[i, :p] = prefix
            ids[i, p] = a["vision_start_id"]
            ids[i, p + 1 : p + 1 + r] = a["image_token_id"]
            ids[i, p + 1 + r] = a["vision_end_id"]
            types[i, p + 1 : p + 1 + r] = 1
            mask[i, : p + r + 2] = 1
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            mm_token_type_ids=types,
            pixel_values=pixel_values.to(self.model.dtype),
            image_grid_thw=image_grid_thw,
            use_cache=False,
        )
        hidden = out.last_hidden_state  # [n, width, D], after the final norm
        return torch.cat([hidden[i, p : p + r + 2] for i, r in enumerate(rows.tolist())])  # [sum(N_i + 2), D]

    @classmethod
    def load(
        cls, source: str, *, dtype: torch.dtype | None, trust_remote_code: bool, allow_pickle: bool = False
    ) -> LoadedEncoder:
        config = load_config(source, trust_remote_code)
        family = check_family(config)
        model = load_pretrained(
            AutoModel, source, dtype=dtype, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle
        )
        processor = load_auto(AutoProcessor, source, "processor", trust_remote_code=trust_remote_code)
        args = perceiver_args(config, processor)
        image_processor = processor.image_processor
        size = dict(getattr(image_processor, "size", None) or {})
        if size.get("longest_edge", 0) > DEFAULT_MAX_PIXELS:
            size["longest_edge"] = DEFAULT_MAX_PIXELS
            image_processor.size = size
            if hasattr(image_processor, "max_pixels"):
                image_processor.max_pixels = DEFAULT_MAX_PIXELS
        return LoadedEncoder(
            cls(model.config, args, model=model),
            model.config,
            image_processor,
            {"model_type": config.model_type, "family": family.name, "text_family": family.text_family},
        )


def perceiver_args(config: PreTrainedConfig, processor, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> dict:
    """Token ids and sizes the perceiver prompt needs, read from the perceiver's own config/template."""
    tok = processor.tokenizer
    vs, ve = config.vision_start_token_id, config.vision_end_token_id
    messages = [
        {"role": "system", "content": [{"type": "text", "text": system_prompt}]},
        {"role": "user", "content": [{"type": "image"}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if vs not in ids or ve not in ids:
        raise VlmSwapError("the perceiver's chat template does not place vision start/end tokens around an image")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return {
        "prefix_ids": ids[: ids.index(vs)],
        "vision_start_id": vs,
        "vision_end_id": ve,
        "image_token_id": config.image_token_id,
        "pad_id": int(pad_id if pad_id is not None else 0),
        "merge_size": config.vision_config.spatial_merge_size,
        "system_prompt": system_prompt,
    }
