"""Generation with an upgraded model: images + a prompt -> a streamed answer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from transformers import TextIteratorStreamer

from .errors import VlmSwapError

#: Images above this many pixels are refused before decoding (decompression-bomb guard).
MAX_IMAGE_PIXELS = 64_000_000


def load_image(path: str | Path) -> Image.Image:
    """An RGB image from a file, with a one-line error for anything that is not a usable image."""
    path = Path(path)
    if not path.is_file():
        raise VlmSwapError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w == 0 or h == 0:
                raise VlmSwapError(f"image {path} has zero size")
            if w * h > MAX_IMAGE_PIXELS:
                raise VlmSwapError(f"image {path} is {w}x{h}, over the {MAX_IMAGE_PIXELS:,}-pixel budget")
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise VlmSwapError(f"not a readable image: {path} ({exc.__class__.__name__})") from exc


def build_prompt(processor, prompt: str, n_images: int) -> str:
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


def generate_answer(
    model_dir: str, images: list[str], prompt: str, *, max_new_tokens: int = 64, model=None, processor=None
) -> Iterator[str]:
    """Stream the answer to ``prompt`` about ``images`` (greedy decoding, KV cache)."""
    from .api import load

    pictures = [load_image(p) for p in images]
    if model is None:
        model, processor = load(model_dir)
    text = build_prompt(processor, prompt, len(pictures))
    inputs = processor(images=pictures, text=text, return_tensors="pt").to(model.device)
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
