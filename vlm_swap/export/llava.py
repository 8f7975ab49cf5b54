"""``--format llava``: an upgraded model with a CLIP or SigLIP tower as a native llava-hf checkpoint.

transformers' ``LlavaForConditionalGeneration`` runs vision tower -> hidden states of
``vision_feature_layer`` (CLS dropped under the "default" strategy) -> ``Linear, act, Linear`` ->
LLM, which is what the ``hf-vit`` encoder and the connectors compute, so the export is a renaming
of tensors plus a LlavaConfig and a LlavaProcessor:

- ``language_model.<base>.*`` -> ``model.language_model.*``, ``language_model.lm_head.*`` -> ``lm_head.*``
- ``encoder.model.*`` -> ``model.vision_tower.*``
- connector ``0`` / ``2`` -> ``model.multi_modal_projector.linear_1`` / ``linear_2``

``mlp2x-gelu`` maps as is (act ``gelu``); ``mlp2x-relu`` (Linear(d_enc, d_enc)) only when the encoder
and LLM widths are equal (act ``relu``); ``linear`` becomes ``linear_1`` with act ``linear`` and an
identity ``linear_2`` (exact: x @ I + 0 == x). Encoders Llava cannot run (SigLIP2 NaFlex, timm,
open-clip, perceivers) are refused with the format to use instead.

A renaming changes no byte, so the weights are copied file to file, tensor by tensor (``ShardWriter`` given
byte ranges of the model's shards, as the upgrade copies an LLM): the export's memory does not grow with the model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, LlavaConfig, LlavaProcessor

from ..checkpoints.model_files import write_model_extras
from ..checkpoints.resolve import weight_files
from ..checkpoints.shards import ShardWriter, copied
from ..checkpoints.tensors import safetensors_tensors
from ..errors import VlmSwapError
from ..format.configuration_swap_vlm import SwapVLMConfig
from ..format.kinds import processing
from ..format.processing_swap_vlm import SwapVLMProcessor

#: encoder_config.model_type -> has a CLS token (Llava runs these towers without extra inputs)
LLAVA_TOWERS = {"clip_vision_model": True, "siglip_vision_model": False}
#: connector id -> Llava projector_hidden_act
PROJECTOR_ACT = {"mlp2x-gelu": "gelu", "mlp2x-relu": "relu", "linear": "linear"}

# A text-only chat template (most LLMs) renders image entries as the image token first, like
# SwapVLMProcessor.flatten_messages: list content -> one string, each image as "<image>\n".
FLATTEN_PRELUDE = """{%- set ns = namespace(msgs=[]) -%}
{%- for m in messages -%}
{%- if m['content'] is string -%}{%- set ns.msgs = ns.msgs + [m] -%}
{%- else -%}{%- set c = namespace(text='') -%}
{%- for item in m['content'] -%}
{%- if item['type'] == 'text' -%}{%- set c.text = c.text + item['text'] -%}
{%- elif item['type'] in ('image', 'image_url') -%}{%- set c.text = c.text + IMAGE_TOKEN + '\\n' -%}{%- endif -%}
{%- endfor -%}
{%- if c.text.endswith(IMAGE_TOKEN + '\\n') -%}{%- set c.text = c.text[:-1] -%}{%- endif -%}
{%- set ns.msgs = ns.msgs + [{'role': m['role'], 'content': c.text}] -%}
{%- endif -%}
{%- endfor -%}
{%- set messages = ns.msgs -%}
"""


def check_llava_exportable(config: SwapVLMConfig) -> tuple[str, str]:
    """(projector act, feature select strategy), or a one-line refusal naming the format to use."""
    kind = config.encoder_kind
    model_type = getattr(config.encoder_config, "model_type", None)
    if kind != "hf-vit" or model_type not in LLAVA_TOWERS:
        what = f"{kind} ({model_type})" if kind == "hf-vit" else kind
        raise VlmSwapError(
            f"--format llava needs a CLIP or SigLIP hf-vit encoder that transformers' Llava runs natively, "
            f"not {what}; use --format remote-code"
        )
    args = config.encoder_args
    if args.get("drop_cls") and not LLAVA_TOWERS[model_type]:
        raise VlmSwapError("the encoder drops a CLS token its tower does not have; use --format remote-code")
    act = PROJECTOR_ACT.get(config.connector)
    if act is None:
        raise VlmSwapError(
            f"connector {config.connector!r} has no Llava projector equivalent; use --format remote-code"
        )
    d_llm = config.text_config.hidden_size
    if config.connector == "mlp2x-relu" and config.encoder_dim != d_llm:
        raise VlmSwapError(
            f"mlp2x-relu's hidden width is the encoder's ({config.encoder_dim}), Llava's projector uses the LLM's "
            f"({d_llm}); use --format remote-code"
        )
    return act, "default" if args.get("drop_cls") else "full"


def llava_config(config: SwapVLMConfig, act: str, strategy: str, seq_length: int) -> LlavaConfig:
    out = LlavaConfig(
        vision_config=config.encoder_config.to_dict(),
        text_config=config.text_config.to_dict(),
        image_token_index=config.image_token_id,
        image_seq_length=seq_length,
        projector_hidden_act=act,
        vision_feature_select_strategy=strategy,
        vision_feature_layer=int(config.encoder_args["feature_layer"]),
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(config.text_config.tie_word_embeddings),
        dtype=config.dtype,
    )
    out.architectures = ["LlavaForConditionalGeneration"]
    return out


def llava_key(key: str, base_prefix: str) -> str:
    """A SwapVLM tensor name -> its name in LlavaForConditionalGeneration."""
    if key.startswith("language_model."):
        rest = key[len("language_model.") :]
        if rest.startswith(base_prefix + "."):
            return "model.language_model." + rest[len(base_prefix) + 1 :]
        return rest  # lm_head.*
    if key.startswith("encoder.model."):
        return "model.vision_tower." + key[len("encoder.model.") :]
    if key.startswith("connector."):
        index, _, param = key[len("connector.") :].partition(".")
        layer = {"0": "linear_1", "2": "linear_2"}.get(index)
        if layer is not None:
            return f"model.multi_modal_projector.{layer}.{param}"
    raise VlmSwapError(f"weight {key!r} has no place in a Llava checkpoint")


def write_llava_weights(model_dir: Path, config: SwapVLMConfig, tmp: Path) -> None:
    """Copy the tensors of ``model_dir``, renamed, into ``tmp`` as they lie in its shards: each tensor's bytes are
    copied file to file (a renaming changes no byte), so neither a model nor a tensor is ever in memory. Each
    source shard starts an output shard, so the copies keep their offsets modulo 64 KiB (the fast kernel copy)."""
    with torch.device("meta"):
        base_prefix = AutoModelForCausalLM.from_config(config.text_config).base_model_prefix
    shards, linear_dtype = [], None
    for path in weight_files(model_dir):
        tensors = safetensors_tensors(path)  # headers only
        if "connector.0.weight" in tensors:
            linear_dtype = tensors["connector.0.weight"].dtype
        shards.append([copied(llava_key(key, base_prefix), t) for key, t in tensors.items()])
    with ShardWriter(tmp) as writer:
        writer.add_shards(shards)
        if config.connector == "linear":  # identity second layer: Llava always applies two
            d = config.text_config.hidden_size
            writer.add("model.multi_modal_projector.linear_2.weight", torch.eye(d, dtype=linear_dtype))
            writer.add("model.multi_modal_projector.linear_2.bias", torch.zeros(d, dtype=linear_dtype))
        writer.close()


def image_seq_length(processor: SwapVLMProcessor, config: SwapVLMConfig) -> int:
    """Image tokens of one default-size image, as the processor counts them (Llava's towers have no boundaries)."""
    return processing(config.encoder_kind).rows_per_image(processor.image_processor, config.encoder_args)


def llava_processor(processor: SwapVLMProcessor, config: SwapVLMConfig, strategy: str) -> LlavaProcessor:
    template = processor.chat_template
    if template and processor.text_only_template:
        template = FLATTEN_PRELUDE.replace("IMAGE_TOKEN", repr(processor.image_token)) + template
    has_cls = bool(config.encoder_args.get("has_cls"))
    return LlavaProcessor(
        image_processor=processor.image_processor,
        tokenizer=processor.tokenizer,
        chat_template=template,
        patch_size=int(config.encoder_args["patch_size"]),
        vision_feature_select_strategy=strategy,
        image_token=processor.image_token,
        num_additional_image_tokens=1 if has_cls else 0,
    )


def export_llava(model_dir: Path, tmp: Path) -> dict:
    """Write the llava-hf checkpoint of ``model_dir`` into ``tmp``; return facts for the model card."""
    config = SwapVLMConfig.from_pretrained(model_dir)
    act, strategy = check_llava_exportable(config)
    processor = SwapVLMProcessor.from_pretrained(model_dir)
    write_llava_weights(model_dir, config, tmp)
    generation = (model_dir / "generation_config.json").is_file()
    write_model_extras(
        tmp,
        config=llava_config(config, act, strategy, image_seq_length(processor, config)),
        processor=llava_processor(processor, config, strategy),
        generation_config=GenerationConfig.from_pretrained(model_dir) if generation else None,
    )
    return {"architecture": "LlavaForConditionalGeneration", "projector_hidden_act": act, "strategy": strategy}
