"""Encoding: a sample -> token ids and labels, with each image placeholder expanded to its rows.

The text side renders the target's chat template and puts the loss on assistant tokens only (not
the prompt, not the image placeholders, not an empty think block). Each image placeholder expands
with the processor's own rule. ``layout`` does both from the expansions alone, so the index
(``ImageRows``: the expansion of an image from its *size*) and the full encode (from the processed
pixels) share one code path and agree token for token. A sample whose image tokens would be cut by
``max_length`` is dropped (``TooLong``), never truncated into a placeholder/feature mismatch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jinja2
import torch
from PIL import Image

from ..errors import VlmSwapError, first_line
from ..format.kinds import processing
from ..images import load_image
from .formats import RowError, Sample

IGNORE = -100
MAX_PROMPTS = 4096  # distinct rendered prompts kept by an encoder


class TooLong(ValueError):
    """The sample's image tokens do not fit max_length (dropped, never truncated)."""


class Layout:
    """A sample's token ids and labels before truncation, and where its last image ends."""

    __slots__ = ("ids", "labels", "image_end")

    def __init__(self, ids: list[int], labels: list[int], image_end: int):
        self.ids, self.labels, self.image_end = ids, labels, image_end

    @property
    def first_label(self) -> int:
        """Position of the first trained token (len(ids) when none)."""
        return next((i for i, lab in enumerate(self.labels) if lab != IGNORE), len(self.ids))

    def check(self, max_length: int) -> None:
        if self.image_end > max_length:
            raise TooLong(f"{self.image_end} tokens up to the last image > max_length {max_length}")
        if self.first_label >= max_length:
            raise TooLong(f"no answer token within max_length {max_length}")


class SampleEncoder:
    """Sample -> model inputs with labels, using the upgraded model's processor (or a source's own)."""

    def __init__(self, processor, max_length: int, empty_think: str | None = None):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_length = max_length
        self.empty_think = empty_think
        self.image_token_id = processor.image_token_id
        self._expansion_ids: dict[str, list[int]] = {}
        self._prompts: dict[str, str] = {}  # rendered prompts (the turns before an answer) by their messages

    def _render(self, messages: list[dict], **kwargs) -> str:
        try:
            text = self.processor.apply_chat_template(messages, tokenize=False, **kwargs)
        except jinja2.TemplateError as exc:  # e.g. templates that require alternating user/assistant turns
            raise RowError(f"the chat template refuses this conversation: {exc}") from exc
        normalize = getattr(self.processor, "normalize_text", None)  # SwapVLMProcessor; others need none
        return normalize(text) if normalize else text

    def answer_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans of its answers."""
        full = self._render(messages)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            if i == 0:
                raise RowError("the conversation starts with an assistant turn: no prompt for it")
            before = self._prompt(messages[:i])
            through = full if i == len(messages) - 1 else self._render(messages[: i + 1])
            if not (full.startswith(through) and through.startswith(before)):
                raise RowError("the chat template does not render turns as prefixes; cannot mask the prompt")
            start = len(before)
            if self.empty_think and full.startswith(self.empty_think, start):
                start += len(self.empty_think)
            spans.append((start, len(through)))
        return full, spans

    def _prompt(self, messages: list[dict]) -> str:
        """The rendered turns before an answer, with the generation prompt. Datasets repeat a few prompts
        (LLaVA-Pretrain: a dozen instructions), so renders are memoised: one render per row instead of two."""
        key = json.dumps(messages)
        text = self._prompts.get(key)
        if text is None:
            text = self._render(messages, add_generation_prompt=True)
            if len(self._prompts) < MAX_PROMPTS:
                self._prompts[key] = text
        return text

    def expansion_ids(self, expansion: str) -> list[int]:
        """Token ids of an image placeholder's expansion (a string of image tokens), memoised."""
        ids = self._expansion_ids.get(expansion)
        if ids is None:
            ids = self._expansion_ids[expansion] = self.tokenizer(expansion, add_special_tokens=False)["input_ids"]
        return ids

    @staticmethod
    def _close_answer(ids: list[int], labels: list[int], eos: int | None) -> None:
        """Templates that do not end an answer with eos (LLaVA-1.5's) get one, trained on, so the model stops."""
        if eos is not None and (not labels or labels[-1] != eos):
            ids.append(eos)
            labels.append(eos)

    def layout(
        self, tokens: dict[str, list], spans: list[tuple[int, int]], n_images: int, expand: Callable[[int], list[int]]
    ) -> Layout:
        """Ids and labels of a rendered, tokenized conversation (``input_ids`` + ``offset_mapping``), image
        placeholder ``k`` replaced by ``expand(k)``."""
        ids: list[int] = []
        labels: list[int] = []
        image_end = -1
        k = 0
        eos = self.tokenizer.eos_token_id
        open_spans = list(spans)  # answer spans not yet closed by an eos token
        for tok, (s, e) in zip(tokens["input_ids"], tokens["offset_mapping"], strict=True):
            while open_spans and s >= open_spans[0][1] and e > s:
                self._close_answer(ids, labels, eos)
                open_spans.pop(0)
            if tok == self.image_token_id:
                if k >= n_images:
                    raise RowError("more image placeholders in the rendered prompt than images")
                exp_ids = expand(k)
                ids.extend(exp_ids)
                labels.extend([IGNORE] * len(exp_ids))
                image_end = len(ids)
                k += 1
                continue
            ids.append(tok)
            inside = any(s >= a and e <= b and e > s for a, b in spans)
            labels.append(tok if inside else IGNORE)
            if inside and tok == eos and open_spans:
                open_spans.pop(0)
        for _ in open_spans:
            self._close_answer(ids, labels, eos)
        if k != n_images:
            raise RowError(f"the rendered prompt holds {k} image placeholders for {n_images} images")
        return Layout(ids, labels, image_end)

    def tokenize(self, texts: list[str]) -> list[dict[str, list]]:
        """Rendered conversations -> ``input_ids`` + ``offset_mapping`` each, in one batched call."""
        if not texts:
            return []
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return [
            {"input_ids": i, "offset_mapping": o} for i, o in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
        ]

    def __call__(self, sample: Sample, images=None) -> dict[str, torch.Tensor]:
        text, spans = self.answer_spans(sample.messages)
        pictures = images if images is not None else [load_image(p) for p in sample.images]
        # a SwapVLM processor preprocesses per encoder kind; a source's own processor (eval of a llava) directly
        process = getattr(self.processor, "process_images", None) or self.processor.image_processor
        image_inputs = None
        if pictures:
            try:
                image_inputs = process(pictures, return_tensors="pt")
            except ValueError as exc:  # e.g. Qwen-VL's smart_resize: "absolute aspect ratio must be smaller than 200"
                raise RowError(f"the image processor refuses an image of this sample: {first_line(exc)}") from exc
        (tokens,) = self.tokenize([text])
        layout = self.layout(
            tokens,
            spans,
            len(pictures),
            lambda k: self.expansion_ids(self.processor.replace_image_token(image_inputs, k)),
        )
        layout.check(self.max_length)
        out = {
            "input_ids": torch.tensor(layout.ids[: self.max_length], dtype=torch.long),
            "labels": torch.tensor(layout.labels[: self.max_length], dtype=torch.long),
        }
        if image_inputs is not None:
            out.update({k: v for k, v in image_inputs.items() if isinstance(v, torch.Tensor)})
        return out


class ImageRows:
    """The expansion token ids of an image from its size alone, by the processor's own counting rule.

    A SwapVLM processor asks its encoder kind (``rows_for_size``: e.g. Qwen-VL's
    ``get_number_of_image_patches``); any other processor (a source VLM's, in eval) processes a blank
    image of that size. Results are memoised per size, or once when the kind's output does not depend
    on the size (fixed-resolution towers), so a dataset costs one computation per distinct image size.
    """

    def __init__(self, encoder: SampleEncoder):
        self.encoder = encoder
        processor = encoder.processor
        kind = getattr(processor, "encoder_kind", None)
        self.processing = processing(kind) if kind is not None and hasattr(processor, "expansion") else None
        args = getattr(processor, "encoder_args", {})
        self.fixed = self.processing is not None and self.processing.size_independent(processor.image_processor, args)
        self.memo: dict[Any, list[int]] = {}

    def __call__(self, width: int, height: int) -> list[int]:
        key = None if self.fixed else (width, height)
        ids = self.memo.get(key)
        if ids is None:
            ids = self.memo[key] = self.encoder.expansion_ids(self._expansion(width, height))
        return ids

    def _expansion(self, width: int, height: int) -> str:
        processor = self.encoder.processor
        try:
            if self.processing is not None:
                rows = self.processing.rows_for_size(processor.image_processor, height, width, processor.encoder_args)
                return processor.expansion(rows)
            inputs = processor.image_processor([Image.new("RGB", (width, height))], return_tensors="pt")
            return processor.replace_image_token(inputs, 0)
        except (ValueError, VlmSwapError) as exc:  # e.g. Qwen-VL refuses an aspect ratio over 200
            raise RowError(f"the image processor refuses a {width}x{height} image: {first_line(exc)}") from exc
