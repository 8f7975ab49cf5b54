"""``SwapVLMProcessor``: encoder preprocessing + placeholder expansion + the LLM's chat template.

A prompt holds one ``image_token`` per image. The processor runs the encoder's image processor,
asks the encoder kind how many rows each image gives (N), and expands each ``image_token`` to
``image_start + image_token * N + image_end``. Where the chat template already wraps the image
token in the start/end tokens (Qwen templates do), the wrapping is normalised first so it is
never doubled. The chat template is the LLM's own; a text-only template (most LLMs) gets
messages whose image entries are rendered as ``image_token`` in the text.
"""

from __future__ import annotations

from typing import Any

from transformers import ProcessorMixin
from transformers.image_utils import make_flat_list_of_images

from .kinds import encoder_module
from .kinds import processing as kind_processing


def flatten_messages(conversation: list, image_token: str) -> list:
    """Messages with list content -> string content, image entries as ``image_token``."""
    if conversation and isinstance(conversation[0], (list, tuple)):
        return [flatten_messages(c, image_token) for c in conversation]
    out = []
    for msg in conversation:
        content = msg.get("content")
        if isinstance(content, list):
            parts = []
            for item in content:
                if item.get("type") == "text":
                    parts.append(item.get("text", ""))
                elif item.get("type") in ("image", "image_url") or "image" in item:
                    parts.append(image_token + "\n")
            content = "".join(parts)
            if content.endswith(image_token + "\n"):
                content = content[:-1]
        out.append({**msg, "content": content})
    return out


class SwapVLMProcessor(ProcessorMixin):
    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template: str | None = None,
        image_token: str = "<image>",
        image_start: str = "",
        image_end: str = "",
        encoder_kind: str = "hf-vit",
        encoder_args: dict | None = None,
        text_only_template: bool = True,
        **kwargs,
    ):
        self.image_token = image_token
        self.image_start = image_start
        self.image_end = image_end
        self.encoder_kind = encoder_kind
        self.encoder_args = dict(encoder_args or {})
        self.text_only_template = text_only_template
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token) if tokenizer is not None else None
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @property
    def processing(self):
        """The encoder kind's preprocessing and row counts (``format.encoder.ImageProcessing``)."""
        return kind_processing(self.encoder_kind)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        n = self.processing.image_rows(_as_tensors(image_inputs), image_idx, self.encoder_args)
        return self.expansion(n)

    def expansion(self, rows: int) -> str:
        """The prompt text of one image of ``rows`` rows."""
        return self.image_start + self.image_token * rows + self.image_end

    def process_images(self, images, **kwargs) -> dict[str, Any]:
        """The encoder kind's preprocessing of ``images`` (a flat list) with its image processor."""
        images = make_flat_list_of_images(images)
        return self.processing.preprocess(self.image_processor, images, self.encoder_args, **kwargs)

    def _process_images(self, images, **kwargs):
        # ProcessorMixin.__call__'s private hook (pinned by tests/test_compat.py): (inputs, one expansion per image)
        processed = self.process_images(images, **kwargs)
        n = len(make_flat_list_of_images(images))
        return processed, [self.replace_image_token(processed, i) for i in range(n)]

    def normalize_text(self, text: str) -> str:
        """Undo a template's own start/end wrapping of the image token (the expansion adds it back)."""
        if self.image_start or self.image_end:
            return text.replace(self.image_start + self.image_token + self.image_end, self.image_token)
        return text

    def __call__(self, images=None, text=None, **kwargs):
        if text is not None:
            text = self.normalize_text(text) if isinstance(text, str) else [self.normalize_text(t) for t in text]
        return super().__call__(images=images, text=text, **kwargs)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        if self.text_only_template:
            conversation = flatten_messages(conversation, self.image_token)
        return super().apply_chat_template(conversation, chat_template, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        names = list(self.tokenizer.model_input_names) + list(encoder_module(self.encoder_kind).input_names)
        return list(dict.fromkeys(names))


def _as_tensors(image_inputs: dict) -> dict[str, Any]:
    import torch

    out = {}
    for k, v in image_inputs.items():
        try:
            out[k] = torch.as_tensor(v) if not isinstance(v, torch.Tensor) else v
        except (TypeError, ValueError):
            out[k] = v
    return out
