"""The upgrade-time half of an encoder kind: reading its checkpoint into the run-time module of the format.

A backend names its run-time module (``runtime``: a ``format.encoder.EncoderModule``, whose ``processing`` is
the kind's preprocessing) and loads a source into it with the image processor and the facts to save. Only
``upgrade``, ``build`` and the tools that read encoders by themselves use backends; a saved model needs none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..format.encoder import EncoderModule

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedConfig

    from ..checkpoints.tensors import SourceTensor


@dataclass(frozen=True)
class LoadOptions:
    """How a backend reads a source.

    ``dtype``: the module's dtype (None: as stored). Pickle weights load only with ``allow_pickle`` (read with
    ``weights_only=True``); remote code runs only with ``trust_remote_code``. With ``stream``, a safetensors
    checkpoint that loads by renaming keys alone is not read: the module is built on the meta device and
    ``LoadedEncoder.weights`` maps its state dict to the checkpoint's tensors (``streaming``); ``dtype`` is then
    the caller's to apply."""

    dtype: torch.dtype | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    stream: bool = False


class EncoderBackend:
    """Base class: subclasses set ``runtime`` and ``help`` and implement ``load``."""

    runtime: ClassVar[type[EncoderModule]]
    help: ClassVar[str]
    #: the file that marks a local directory as a checkpoint this kind loads
    marker_file: ClassVar[str] = "config.json"
    #: the run-time module's facts, for listings: set from ``runtime`` for each subclass
    kind: ClassVar[str]
    input_names: ClassVar[tuple[str, ...]]
    uses_boundaries: ClassVar[bool]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.kind, cls.input_names, cls.uses_boundaries = (
            cls.runtime.kind,
            cls.runtime.input_names,
            cls.runtime.uses_boundaries,
        )

    @classmethod
    def load(cls, source: str, options: LoadOptions = LoadOptions()) -> LoadedEncoder:
        """The encoder at the local directory ``source``, with its image processor."""
        raise NotImplementedError

    @classmethod
    def has_boundaries(cls, source: str, options: LoadOptions = LoadOptions()) -> bool:
        """Whether the encoder at ``source`` gives boundary rows, known without loading its weights."""
        return cls.uses_boundaries


class LoadedEncoder:
    """An encoder as loaded from its source: module, image processor and the facts to save.

    ``weights``, when set, holds the module's state dict as tensors of the checkpoint files, and the module is on
    the meta device (``LoadOptions.stream``)."""

    def __init__(
        self,
        module: EncoderModule,
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
        from ..checkpoints.tensors import SourceTensor

        if self.weights is not None:
            return self.weights
        return {k: SourceTensor.in_memory(v.detach()) for k, v in self.module.state_dict().items()}
