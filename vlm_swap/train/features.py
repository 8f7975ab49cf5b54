"""Frozen-encoder feature cache: each image's encoder rows computed once, reused across steps and stages.

Where a stage keeps the encoder frozen (both shipped recipes freeze it), the encoder's output depends only
on the processed image inputs and the encoder weights. The cache keys each sample's rows ``[R_i, D_enc]``
by a content hash of the sample's processed image tensors (``pixel_values``, ``image_grid_thw``, ...) and
holds them in CPU memory up to a byte bound (the recipe's ``feature_cache_mb``); once full it keeps what it
holds, because with shuffled epochs a least-recently-used policy would evict every entry before its reuse.
Entries belong to one encoder fingerprint (a hash of its kind, arguments and weights, adapters included):
a stage that starts with other encoder weights empties the cache. A different preprocessing gives other
pixel tensors, hence other keys.

A batch whose samples are all cached runs the model with ``image_features`` and no encoder forward. Any
other batch runs the model on its pixels as usual; a forward hook on the encoder captures its rows
``[R, D_enc]``, split per sample by the sample's placeholder count (a packed row holds several samples),
and stores them. The first pass over the data is therefore exactly the uncached computation. The encoder is
assumed deterministic when frozen (no dropout). Under several processes each keeps its own cache and all take
the same path every step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .distributed import agree, gathered
from .plan import MODULE_OF, component_of


def _update(h, name: str, tensor: torch.Tensor) -> None:
    t = tensor.detach()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes())


def content_key(image_inputs: dict[str, torch.Tensor]) -> str:
    """Hash of one sample's processed image tensors (names, dtypes, shapes and bytes)."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(image_inputs):
        _update(h, name, image_inputs[name])
    return h.hexdigest()


def encoder_module(model: nn.Module) -> nn.Module:
    """The encoder component of a plain or peft-wrapped SwapVLM."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == MODULE_OF["encoder"] and component_of(name) == "encoder":
            return module
    raise ValueError("the model has no encoder component")


def fingerprint(model: nn.Module) -> str:
    """Identity of the encoder as it computes now: kind, arguments and every weight (LoRA included)."""
    enc = encoder_module(model)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{type(enc).__qualname__}|{sorted(getattr(enc, 'args', {}).items())!r}|".encode())
    for name, tensor in gathered([*enc.named_parameters(), *enc.named_buffers()]):  # whole weights when sharded
        _update(h, name, tensor)
    return h.hexdigest()


class FeatureCache:
    """Encoder rows per sample key, for one encoder fingerprint, bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.used = 0
        self.entries: dict[str, torch.Tensor] = {}
        self.owner: str | None = None
        self.hits = 0  # samples served from the cache
        self.misses = 0  # samples whose rows the encoder computed
        self.encoder_forwards = 0
        self._encoder: nn.Module | None = None
        self._input_names: tuple[str, ...] = ()

    def bind(self, model: nn.Module) -> None:
        """Use the cache with ``model`` (call when a stage starts): entries of other encoder weights are dropped."""
        owner = fingerprint(model)
        if owner != self.owner:
            self.entries.clear()
            self.used = 0
            self.owner = owner
        self._encoder = encoder_module(model)
        self._input_names = type(self._encoder).input_names  # every input the kind's module may take
        self.hits = self.misses = self.encoder_forwards = 0

    def stats(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "encoder_forwards": self.encoder_forwards,
            "entries": len(self.entries),
            "bytes": self.used,
        }

    def _all_cached(self, keys: list[tuple[str | None, int]], device: torch.device) -> bool:
        hit = all(k is None or k in self.entries for k, _ in keys) and any(k is not None for k, _ in keys)
        return agree(hit, device)  # every rank takes the same path (sharded encoders)

    def run(
        self, keys: list[tuple[str | None, int]], inputs: dict[str, Any], step: Callable[[dict[str, Any]], Any]
    ) -> Any:
        """``step(inputs)`` with cached rows when every sample has them, else on pixels while storing rows.

        ``keys`` are (content key or None, placeholder rows) per sample, in batch order (``data.Collator``)."""
        if self._encoder is None:
            raise RuntimeError("FeatureCache.bind(model) must be called before run()")
        device = inputs["input_ids"].device
        if self._all_cached(keys, device):
            rows = [self.entries[k] for k, _ in keys if k is not None]
            inputs = {k: v for k, v in inputs.items() if k not in self._input_names}
            inputs["image_features"] = torch.cat(rows).to(device, non_blocking=True)  # [R, D_enc]
            self.hits += sum(k is not None for k, _ in keys)
            return step(inputs)
        captured: list[torch.Tensor] = []
        handle = self._encoder.register_forward_hook(lambda _m, _a, out: captured.append(out.detach()))
        try:
            result = step(inputs)
        finally:
            handle.remove()
        self.encoder_forwards += len(captured)
        if len(captured) == 1:
            self._store(keys, captured[0])
        return result

    def _store(self, keys: list[tuple[str | None, int]], rows: torch.Tensor) -> None:
        counts = [n for _, n in keys]  # rows per sample, in batch order
        if sum(counts) != rows.shape[0]:
            return  # not one encoder row per placeholder: nothing safe to store
        for (key, _), part in zip(keys, torch.split(rows, counts), strict=True):
            if key is None:
                continue
            self.misses += 1
            size = part.numel() * part.element_size()
            if key not in self.entries and self.used + size <= self.max_bytes:
                self.entries[key] = part.to("cpu", copy=True)
                self.used += size
