"""Reading images from disk: one-line errors for missing, undecodable, empty or huge files."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

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
    except Image.DecompressionBombError as exc:
        raise VlmSwapError(f"image {path} is over the {MAX_IMAGE_PIXELS:,}-pixel budget") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise VlmSwapError(f"not a readable image: {path} ({exc.__class__.__name__})") from exc
