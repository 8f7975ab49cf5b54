"""Model FLOPs of the layers that actually run, per component, and MFU against the card's peak.

Every ``nn.Linear`` and convolution of the model gets a forward hook that counts, for the rows it processed
(``[..., d_in]`` inputs: padding, LM head over every position, LoRA's A and B included; encoder layers only
when the encoder runs, not when its features come from the cache), ``2 x weight x rows`` for the forward,
``+2`` when its weight trains (weight gradient) and ``+2`` when a gradient crosses it (input gradient). That is
6N per token for trained parameters, 4N for frozen ones gradients cross (the LLM under a trained connector),
2N for frozen parts upstream of all training (a frozen encoder). Each layer is counted once per forward, so
activation-checkpointing recompute is not counted, nor are attention scores: MFU is conservative.
``bench/bench_gpu.py`` checks the forward count against ``torch.utils.flop_counter``.
"""

from __future__ import annotations

import torch
from torch import nn

from .distributed import numel
from .plan import component_of

#: dense bf16 peak FLOP/s by card name (a substring of ``torch.cuda.get_device_name()``)
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "B200": 2250e12, "A100": 312e12, "L40S": 362e12}
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def peak_flops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in device_name), None)


class FlopCounter:
    """Model FLOPs per component (encoder / connector / llm) of the forwards and backwards since ``take()``."""

    def __init__(self, model: nn.Module):
        self.totals: dict[str, float] = {}
        self._seen: set[int] = set()
        self._handles = [model.register_forward_pre_hook(lambda *_: self._seen.clear())]  # a new forward
        for name, module in model.named_modules():
            comp = component_of(name)
            if comp is not None and isinstance(module, (nn.Linear, *CONVS)):
                # the weight's size now: once sharded (FSDP2, ZeRO-3) a hook may see a placeholder
                self._handles.append(module.register_forward_hook(self._hook(comp, numel(module.weight))))

    def _hook(self, comp: str, weights: int):
        def count(module: nn.Module, args, output) -> None:
            if id(module) in self._seen or not args:  # a second call in one forward: checkpointing recompute
                return
            self._seen.add(id(module))
            x = args[0]
            if isinstance(module, nn.Linear):
                rows = x.numel() // module.in_features
            else:
                rows = output.numel() // module.out_channels
            factor = 2
            if torch.is_grad_enabled():
                factor += 2 * module.weight.requires_grad + 2 * x.requires_grad
            self.totals[comp] = self.totals.get(comp, 0.0) + factor * weights * rows

        return count

    def take(self) -> dict[str, float]:
        """FLOPs per component counted since the last call (and reset)."""
        out, self.totals = self.totals, {}
        return out

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
