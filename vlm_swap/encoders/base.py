"""The encoder-backend interface every kind implements.

A backend is an ``nn.Module`` that turns preprocessed images into feature rows for the
connector. Because images of different sizes give different token counts, ``forward`` returns
the rows of all images concatenated in order: ``[R, D]`` with ``R = sum(rows_per_image)``; the
model scatters them into the placeholder positions of the LLM prompt in the same order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedConfig

if TYPE_CHECKING:
    from ..checkpoints.tensors import SourceTensor

#: the side of the square image "rows per image" is quoted for (an image's rows depend on its size for some kinds)
DEFAULT_IMAGE_SIDE = 512


class EncoderBackend(nn.Module):
    """Base class: subclasses set ``kind`` and ``help`` and implement the methods below."""

    kind: ClassVar[str]
    help: ClassVar[str]
    #: names of the processor outputs ``forward`` consumes (besides nothing else)
    input_names: ClassVar[tuple[str, ...]] = ("pixel_values",)
    #: True when the rows include a vision-start and a vision-end row around the N image rows
    uses_boundaries: ClassVar[bool] = False
    #: the file that marks a local directory as a checkpoint this kind loads
    marker_file: ClassVar[str] = "config.json"

    def __init__(self, config: PreTrainedConfig | None, args: dict[str, Any]):
        super().__init__()
        self.args = dict(args)

    @property
    def feature_dim(self) -> int:
        raise NotImplementedError

    def forward(self, **image_inputs: torch.Tensor) -> torch.Tensor:  # -> [R, D]
        raise NotImplementedError

    @classmethod
    def load(
        cls,
        source: str,
        *,
        dtype: torch.dtype | None,
        trust_remote_code: bool,
        allow_pickle: bool = False,
        stream: bool = False,
    ) -> LoadedEncoder:
        """Load the encoder from a local dir with its image processor; pickle weights only with ``allow_pickle``
        (read with ``weights_only=True``). With ``stream``, a safetensors checkpoint that loads by renaming keys
        alone is not read: the module is built on the meta device and ``LoadedEncoder.weights`` maps its state
        dict to the checkpoint's tensors (``streaming``); ``dtype`` is then the caller's to apply."""
        raise NotImplementedError

    @classmethod
    def has_boundaries(cls, source: str, *, trust_remote_code: bool) -> bool:
        """Whether the encoder at ``source`` gives boundary rows, known without loading its weights."""
        return cls.uses_boundaries

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


class LoadedEncoder:
    """An encoder as loaded from its source: module, image processor and the facts to save.

    ``weights``, when set, holds the module's state dict as tensors of the checkpoint files, and the module is on
    the meta device (``load(..., stream=True)``)."""

    def __init__(
        self,
        module: EncoderBackend,
        config: PreTrainedConfig | None,
        image_processor: Any,
        info: dict,
        weights: dict[str, SourceTensor] | None = None,
    ):
        self.module = module
        self.config = config
        self.image_processor = image_processor
        self.info = info  # e.g. {"model_type": ..., "source": ...}
        self.weights = weights

    def tensors(self) -> dict[str, SourceTensor]:
        """The module's state dict as tensors to stream: from the checkpoint files, else from the loaded module."""
        from ..checkpoints.tensors import SourceTensor  # upgrade time only (not in exports)

        if self.weights is not None:
            return self.weights
        return {k: SourceTensor.in_memory(v.detach()) for k, v in self.module.state_dict().items()}


def blank_image(width: int, height: int):
    from PIL import Image

    return Image.new("RGB", (width, height))


def fixed_resolution(image_processor) -> bool:
    """Whether a CLIP-style image processor gives one output size for any input (center crop or squash)."""
    if getattr(image_processor, "do_center_crop", False) and getattr(image_processor, "crop_size", None):
        return True
    size = getattr(image_processor, "size", None) or {}
    return bool(getattr(image_processor, "do_resize", True) and size.get("height") and size.get("width"))


def strided_rows(image_inputs: dict[str, Any], index: int, args: dict[str, Any]) -> int:
    """Rows of a fixed-stride ViT without prefix tokens: (H / stride_h) * (W / stride_w)."""
    h, w = image_inputs["pixel_values"].shape[-2:]
    sh, sw = args["stride"]
    return (h // sh) * (w // sw)
