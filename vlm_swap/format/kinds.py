"""The encoder kind and connector a saved config names, as the classes that build them.

The built-in ones are imported here by name, inside functions: transformers' dynamic-module loader copies the
sibling files it sees imported (at any indentation), and a kind's own library (timm, open_clip) is imported only
when a model of that kind is built. Any other id is a plug-in's, registered with an installed vlm-swap
(``vlm_swap.backends.ENCODERS``, ``vlm_swap.connectors.CONNECTORS``); an exported model has none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .connectors import BUILT_IN_CONNECTORS
from .errors import VlmSwapError

if TYPE_CHECKING:
    from .connectors import ConnectorKind
    from .encoder import EncoderModule, ImageProcessing

BUILT_IN_KINDS = ("perceiver", "hf-vit", "timm", "open-clip")


def encoder_module(kind: str) -> type[EncoderModule]:
    """The run-time module class of encoder kind ``kind`` (its ``processing`` is the kind's preprocessing)."""
    if kind == "perceiver":
        from .perceiver import PerceiverEncoder as module
    elif kind == "hf-vit":
        from .hf_vit import HFViTEncoder as module
    elif kind == "timm":
        from .timm_vit import TimmViTEncoder as module
    elif kind == "open-clip":
        from .open_clip_vit import OpenCLIPEncoder as module
    else:
        try:  # a plug-in kind (its backend names its run-time module)
            from vlm_swap.backends import ENCODERS
        except ImportError:
            raise VlmSwapError(_not_built_in("encoder kind", kind, BUILT_IN_KINDS)) from None
        module = ENCODERS.get(kind).runtime
    return module


def connector_kind(id: str) -> ConnectorKind:
    """The connector kind ``id``: a built-in one, else a plug-in's."""
    if id in BUILT_IN_CONNECTORS:
        return BUILT_IN_CONNECTORS[id]
    try:
        from vlm_swap.connectors import CONNECTORS
    except ImportError:
        raise VlmSwapError(_not_built_in("connector", id, BUILT_IN_CONNECTORS)) from None
    return CONNECTORS.get(id)


def _not_built_in(what: str, id: str, known) -> str:
    return f"{what} {id!r} is not built in ({', '.join(known)}): it needs vlm-swap and the plug-in that registers it"


def processing(kind: str) -> type[ImageProcessing]:
    """Encoder kind ``kind``'s preprocessing and row counts (the saved processor's and the data index's)."""
    return encoder_module(kind).processing
