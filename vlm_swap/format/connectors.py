"""Connector (projector) kinds: what maps encoder features into the LLM's embedding space.

``mlp2x-relu`` is the Deep Pre-Alignment connector (Linear(d, d) -> ReLU -> Linear(d, d_llm));
``mlp2x-gelu`` is LLaVA-1.5's (Linear(d, d_llm) -> GELU -> Linear(d_llm, d_llm)); ``linear`` is
LLaVA-1's. All map ``[..., d_in] -> [..., d_llm]``. The table imports without torch (listings and pair
checks read it through ``vlm_swap.connectors``); torch comes with the first connector built.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


@functools.cache
def connector_class() -> type[nn.Sequential]:
    """``Connector``, the module class of every connector kind (defined on first use, when torch is imported)."""
    from torch import nn

    class Connector(nn.Sequential):
        """The layers of a connector; it computes in its own weights' dtype (float32 while it trains, whatever
        dtype the encoder rows ``[R, d_in]`` arrive in)."""

        def forward(self, x):
            return super().forward(x.to(self[0].weight.dtype))

    Connector.__module__, Connector.__qualname__ = __name__, "Connector"  # pickles as <this module>.Connector
    return Connector


def __getattr__(name: str):
    if name == "Connector":
        return connector_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class ConnectorKind:
    """How to build one connector kind, with a line for listings."""

    id: str
    help: str
    hidden: str  # "in" | "out" | "none": width of the hidden layer

    def build(self, d_in: int, d_out: int) -> nn.Module:
        from torch import nn

        connector = connector_class()
        if self.hidden == "none":
            return connector(nn.Linear(d_in, d_out))
        width = d_in if self.hidden == "in" else d_out
        act = nn.ReLU() if self.id.endswith("relu") else nn.GELU()
        return connector(nn.Linear(d_in, width), act, nn.Linear(width, d_out))

    def num_params(self, d_in: int, d_out: int) -> int:
        if self.hidden == "none":
            return d_in * d_out + d_out
        width = d_in if self.hidden == "in" else d_out
        return d_in * width + width + width * d_out + d_out


BUILT_IN_CONNECTORS = {
    kind.id: kind
    for kind in (
        ConnectorKind("mlp2x-relu", "Linear(d_enc, d_enc) -> ReLU -> Linear(d_enc, d_llm); the DPA connector", "in"),
        ConnectorKind("mlp2x-gelu", "Linear(d_enc, d_llm) -> GELU -> Linear(d_llm, d_llm); LLaVA-1.5", "out"),
        ConnectorKind("linear", "Linear(d_enc, d_llm); LLaVA-1", "none"),
    )
}
