"""The connector registry: the built-in kinds of the model format (``format/connectors.py``) and plug-ins' kinds.

Listings, pair checks and recipes read it without torch.
"""

from __future__ import annotations

from .format.connectors import BUILT_IN_CONNECTORS, ConnectorKind
from .registry import Registry

CONNECTORS: Registry[ConnectorKind] = Registry("connector")
for _id, _kind in BUILT_IN_CONNECTORS.items():
    CONNECTORS.register(_id, _kind)

__all__ = ["CONNECTORS", "ConnectorKind"]
