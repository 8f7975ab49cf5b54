"""A library's eval transform (resize, center crop, normalise) as a transformers image processor.

timm and open_clip describe preprocessing in their own configs; the upgraded model needs a real
transformers image processor that saves with it, so both map onto a ``CLIPImageProcessor``.
"""

from __future__ import annotations

from transformers import CLIPImageProcessor
from transformers.image_utils import PILImageResampling

from ..errors import VlmSwapError

# interpolation name (timm / open_clip) -> resampling of the transformers image processor
RESAMPLE = {
    "bicubic": PILImageResampling.BICUBIC,
    "bilinear": PILImageResampling.BILINEAR,
    "nearest": PILImageResampling.NEAREST,
    "lanczos": PILImageResampling.LANCZOS,
    "box": PILImageResampling.BOX,
    "hamming": PILImageResampling.HAMMING,
}


def clip_processor(
    library: str, size: dict, crop: tuple[int, int], center_crop: bool, interpolation: str, mean, std
) -> CLIPImageProcessor:
    """Resize to ``size``, optionally center-crop to ``crop`` (h, w), normalise with mean/std."""
    if interpolation not in RESAMPLE:
        raise VlmSwapError(f"{library} interpolation {interpolation!r} is not supported ({', '.join(RESAMPLE)})")
    h, w = crop
    return CLIPImageProcessor(
        size=size,
        crop_size={"height": h, "width": w},
        do_center_crop=center_crop,
        resample=RESAMPLE[interpolation],
        image_mean=list(mean),
        image_std=list(std),
    )
