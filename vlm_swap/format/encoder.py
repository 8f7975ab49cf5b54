"""What every encoder kind's run-time half implements: the module, and the preprocessing its processor runs.

An encoder module is an ``nn.Module`` that turns preprocessed images into feature rows for the connector.
Because images of different sizes give different token counts, ``forward`` returns the rows of all images
concatenated in order: ``[R, D]`` with ``R = sum(rows_per_image)``; the model scatters them into the
placeholder positions of the LLM prompt in the same order.

Its ``processing`` class is what the saved processor and the data index ask of the kind: the inputs
``forward`` takes for a list of images, and how many rows an image gives (from those inputs, or from the
image's size alone). The upgrade-time half of a kind (reading its checkpoint) is ``vlm_swap.backends``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedConfig

#: the side of the square image "rows per image" is quoted for (an image's rows depend on its size for some kinds)
DEFAULT_IMAGE_SIDE = 512


class ImageProcessing:
    """A kind's preprocessing and row counts: class methods over the kind's image processor and ``encoder_args``."""

    @staticmethod
    def preprocess(image_processor, images: list, args: dict[str, Any], **kwargs) -> dict[str, Any]:
        """The image inputs ``forward`` takes, dim 0 concatenating across images (so batches collate)."""
        return dict(image_processor(images, **kwargs))

    @staticmethod
    def image_rows(image_inputs: dict[str, Any], index: int, args: dict[str, Any]) -> int:
        """Number of image rows (without boundaries) for image ``index`` of a processor output."""
        raise NotImplementedError

    @classmethod
    def rows_for_size(cls, image_processor, height: int, width: int, args: dict[str, Any]) -> int:
        """``image_rows`` of an image of this size, without its pixels (the data index counts tokens with it).

        By default a blank image of that size is processed; kinds override it with their processor's rule."""
        return cls.image_rows(
            cls.preprocess(image_processor, [blank_image(width, height)], args, return_tensors="pt"), 0, args
        )

    @classmethod
    def rows_per_image(cls, image_processor, args: dict[str, Any], boundaries: bool = False) -> int:
        """Rows one ``DEFAULT_IMAGE_SIDE``-square image gives (``rows_for_size``), plus the two boundary rows when
        ``boundaries``: the figure ``upgrade`` reports, ``inspect`` shows and the llava export's
        ``image_seq_length`` holds."""
        side = DEFAULT_IMAGE_SIDE
        return cls.rows_for_size(image_processor, side, side, args) + (2 if boundaries else 0)

    @classmethod
    def size_independent(cls, image_processor, args: dict[str, Any]) -> bool:
        """True when every image gives the same rows whatever its size (fixed-resolution towers)."""
        return False


class StridedProcessing(ImageProcessing):
    """A fixed-stride ViT without prefix tokens (``args["stride"]``) behind a CLIP-style eval transform."""

    @staticmethod
    def image_rows(image_inputs: dict[str, Any], index: int, args: dict[str, Any]) -> int:
        """(H / stride_h) * (W / stride_w)."""
        h, w = image_inputs["pixel_values"].shape[-2:]
        sh, sw = args["stride"]
        return (h // sh) * (w // sw)

    @classmethod
    def size_independent(cls, image_processor, args: dict[str, Any]) -> bool:
        return fixed_resolution(image_processor)  # the eval transform crops or squashes to the tower's size


class EncoderModule(nn.Module):
    """Base class of the run-time modules: subclasses set ``kind`` and ``processing`` and implement the rest."""

    kind: ClassVar[str]
    processing: ClassVar[type[ImageProcessing]] = ImageProcessing
    #: names of the processor outputs ``forward`` consumes
    input_names: ClassVar[tuple[str, ...]] = ("pixel_values",)
    #: True when the rows include a vision-start and a vision-end row around the N image rows
    uses_boundaries: ClassVar[bool] = False

    def __init__(self, config: PreTrainedConfig | None, args: dict[str, Any]):
        super().__init__()
        self.args = dict(args)

    @property
    def feature_dim(self) -> int:
        raise NotImplementedError

    def forward(self, **image_inputs: torch.Tensor) -> torch.Tensor:  # -> [R, D]
        raise NotImplementedError


def blank_image(width: int, height: int):
    from PIL import Image

    return Image.new("RGB", (width, height))


def fixed_resolution(image_processor) -> bool:
    """Whether a CLIP-style image processor gives one output size for any input (center crop or squash)."""
    if getattr(image_processor, "do_center_crop", False) and getattr(image_processor, "crop_size", None):
        return True
    size = getattr(image_processor, "size", None) or {}
    return bool(getattr(image_processor, "do_resize", True) and size.get("height") and size.get("width"))
