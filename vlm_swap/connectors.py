"""Connector (projector) kinds by id: what maps encoder features into the LLM's embedding space.

``mlp2x-relu`` is the Deep Pre-Alignment connector (Linear(d, d) -> ReLU -> Linear(d, d_llm));
``mlp2x-gelu`` is LLaVA-1.5's (Linear(d, d_llm) -> GELU -> Linear(d_llm, d_llm)); ``linear`` is
LLaVA-1's. All map ``[..., d_in] -> [..., d_llm]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .registry import Registry


class Connector(nn.Sequential):
    """The layers of a connector; it computes in its own weights' dtype (float32 while it trains, whatever
    dtype the encoder rows ``[R, d_in]`` arrive in)."""

    def forward(self, x):
        return super().forward(x.to(self[0].weight.dtype))


@dataclass(frozen=True)
class ConnectorKind:
    """How to build one connector kind, with a line for listings."""

    id: str
    help: str
    hidden: str  # "in" | "out" | "none": width of the hidden layer

    def build(self, d_in: int, d_out: int) -> nn.Module:
        if self.hidden == "none":
            return Connector(nn.Linear(d_in, d_out))
        width = d_in if self.hidden == "in" else d_out
        act = nn.ReLU() if self.id.endswith("relu") else nn.GELU()
        return Connector(nn.Linear(d_in, width), act, nn.Linear(width, d_out))

    def num_params(self, d_in: int, d_out: int) -> int:
        if self.hidden == "none":
            return d_in * d_out + d_out
        width = d_in if self.hidden == "in" else d_out
        return d_in * width + width + width * d_out + d_out


CONNECTORS: Registry[ConnectorKind] = Registry("connector")
for _kind in (
    ConnectorKind("mlp2x-relu", "Linear(d_enc, d_enc) -> ReLU -> Linear(d_enc, d_llm); the DPA connector", "in"),
    ConnectorKind("mlp2x-gelu", "Linear(d_enc, d_llm) -> GELU -> Linear(d_llm, d_llm); LLaVA-1.5", "out"),
    ConnectorKind("linear", "Linear(d_enc, d_llm); LLaVA-1", "none"),
):
    CONNECTORS.register(_kind.id, _kind)
