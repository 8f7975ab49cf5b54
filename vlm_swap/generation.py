"""Generation with an upgraded model: images + a prompt -> a streamed answer."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from transformers import TextIteratorStreamer

from .errors import VlmSwapError, first_line
from .images import load_image


@contextlib.contextmanager
def left_padded(tokenizer) -> Iterator[None]:
    """Within the block, ``tokenizer`` pads batches on the left: batched generation appends every answer right
    after its prompt, so prompts must end together (true of every decoder-only LLM, whatever its family; training
    batches are right-padded by the collator, whatever the tokenizer says). Its own side is restored after."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        yield
    finally:
        tokenizer.padding_side = side


def build_prompt(processor, prompt: str, n_images: int) -> str:
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


def generate_answer(
    model_dir: str,
    images: list[str],
    prompt: str,
    *,
    max_new_tokens: int = 64,
    model=None,
    processor=None,
    allow_pickle: bool = False,
) -> Iterator[str]:
    """Stream the answer to ``prompt`` about ``images`` (greedy decoding, KV cache)."""
    from .api import load

    pictures = [load_image(p) for p in images]
    if model is None:
        model, processor = load(model_dir, allow_pickle=allow_pickle)
    typed = [t for t in (processor.image_token, processor.image_start, processor.image_end) if t and t in prompt]
    if typed:  # the processor would count it as an image of its own
        raise VlmSwapError(f"the prompt contains {typed[0]!r}, the model's image placeholder; pass images with --image")
    text = build_prompt(processor, prompt, len(pictures))
    try:
        inputs = processor(images=pictures, text=text, add_special_tokens=False, return_tensors="pt")
    except ValueError as exc:  # e.g. Qwen-VL's smart_resize refuses an aspect ratio over 200
        first = first_line(exc)
        sizes = ", ".join(f"{p.width}x{p.height}" for p in pictures)
        raise VlmSwapError(f"the image processor refuses the image ({sizes}): {first}") from exc
    inputs = inputs.to(model.device)
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = dict(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        streamer=streamer,
        pad_token_id=processor.tokenizer.pad_token_id,
    )
    errors: list[BaseException] = []

    def work():
        try:
            with torch.inference_mode():
                model.generate(**kwargs)
        except BaseException as exc:  # surfaced in the caller's thread below
            errors.append(exc)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
    if errors:
        raise errors[0]
