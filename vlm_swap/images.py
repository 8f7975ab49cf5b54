"""Reading images: one-line errors for missing, undecodable, empty or huge files, from a path or bytes.

``image_header`` reads only the header (size and mode, no pixels): the index checks every image
with it. ``load_image`` decodes the pixels, with the same checks, where the image is used.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .errors import VlmSwapError

#: Images above this many pixels are refused before decoding (decompression-bomb guard).
MAX_IMAGE_PIXELS = 64_000_000


def _name(source: str | Path | bytes) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, bytes) else str(source)


def _open(source: str | Path | bytes) -> Image.Image:
    """The image opened lazily (header read), its size checked; the caller closes it."""
    name = _name(source)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise VlmSwapError(f"image not found: {name}")
    try:
        img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Image.DecompressionBombError as exc:
        raise VlmSwapError(f"image {name} is over the {MAX_IMAGE_PIXELS:,}-pixel budget") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise VlmSwapError(f"not a readable image: {name} ({exc.__class__.__name__})") from exc
    w, h = img.size
    if w == 0 or h == 0:
        img.close()
        raise VlmSwapError(f"image {name} has zero size")
    if w * h > MAX_IMAGE_PIXELS:
        img.close()
        raise VlmSwapError(f"image {name} is {w}x{h}, over the {MAX_IMAGE_PIXELS:,}-pixel budget")
    return img


def image_header(source: str | Path | bytes) -> tuple[int, int]:
    """(width, height) from the image's header, without decoding its pixels."""
    with _open(source) as img:
        return img.size


def load_image(source: str | Path | bytes) -> Image.Image:
    """An RGB image from a file or encoded bytes, with a one-line error for anything that is not a usable image."""
    with _open(source) as img:
        try:
            return img.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # truncated or corrupt pixel data
            raise VlmSwapError(f"not a readable image: {_name(source)} ({exc.__class__.__name__})") from exc
