"""``perceiver`` at upgrade time: a small VLM read into the format's ``PerceiverEncoder``.

Besides the base model (no LM head), the upgrade reads what the perceiver's prompt needs once, with the
perceiver's own processor and chat template (``perceiver_args``): the prefix token ids of [system prompt,
user turn holding the image] cut right before the image span, the pad id, and the family's token ids and sizes.
Its image processor is capped to DPA's pixel budget where the family allows. Special tokens come from the
perceiver's config and tokenizer; families are ``format.perceiver.PERCEIVER_FAMILIES``.
"""

from __future__ import annotations

from functools import partial

from PIL import Image
from transformers import AutoModel, AutoProcessor, PreTrainedConfig

from ..checkpoints.safe import load_config as read_config
from ..errors import VlmSwapError, first_line
from ..format.perceiver import PerceiverEncoder, check_family, supported_families
from .base import EncoderBackend, LoadedEncoder, LoadOptions
from .streaming import prefixed, pretrained

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


def load_config(source: str, trust_remote_code: bool) -> PreTrainedConfig:
    """The perceiver's config (remote code refused without the flag); an unreadable one names the families."""
    try:
        return read_config(source, trust_remote_code)
    except VlmSwapError as exc:
        raise VlmSwapError(f"{exc} (perceiver families {supported_families()})") from exc


class PerceiverBackend(EncoderBackend):
    runtime = PerceiverEncoder
    help = "a small VLM (Qwen-VL, SmolVLM, LLaVA-OneVision, Gemma 3) whose last-layer image states are the features"

    @classmethod
    def has_boundaries(cls, source: str, options: LoadOptions = LoadOptions()) -> bool:
        return check_family(load_config(source, options.trust_remote_code)).boundaries

    @classmethod
    def load(cls, source: str, options: LoadOptions = LoadOptions()) -> LoadedEncoder:
        trust = options.trust_remote_code
        config = load_config(source, trust)
        family = check_family(config)
        build = partial(AutoModel.from_config, trust_remote_code=trust)
        model, weights = pretrained(AutoModel, source, config, options, build=build)
        try:
            processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust)
        except (ImportError, OSError, ValueError) as exc:
            first = first_line(exc)
            raise VlmSwapError(f"could not load the {family.name} processor of {source}: {first}") from exc
        family.cap(model.config, processor.image_processor)
        args = perceiver_args(model.config, processor)
        return LoadedEncoder(
            PerceiverEncoder(model.config, args, model=model),
            model.config,
            processor.image_processor,
            {"model_type": config.model_type, "family": family.name, "text_family": family.text_family},
            prefixed("model.", weights),
        )


def perceiver_args(config: PreTrainedConfig, processor, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> dict:
    """Token ids and sizes the perceiver prompt needs, read from the perceiver's own config, template and processor."""
    family = check_family(config)
    tok = processor.tokenizer
    messages = [
        {"role": "system", "content": [{"type": "text", "text": system_prompt}]},
        {"role": "user", "content": [{"type": "image"}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    ids = processor(images=[Image.new("RGB", (64, 64))], text=[text])["input_ids"][0]
    ids = [int(i) for i in ids]
    start = family.span_start_id(config, processor)
    if start not in ids:
        raise VlmSwapError(f"the {family.name} chat template does not place an image span in the prompt")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return {
        "model_type": config.model_type,
        "prefix_ids": ids[: ids.index(start)],
        "pad_id": int(pad_id if pad_id is not None else 0),
        "system_prompt": system_prompt,
        **family.args(config, processor),
    }
