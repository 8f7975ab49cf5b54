"""The upgraded-model format: config, model, processor and the run-time half of every encoder kind.

These files depend on torch and transformers only (and an encoder's own library: timm, open_clip), import each
other as flat siblings (``from .x import y``) and nothing else of vlm_swap, because ``export --format
remote-code`` ships them as they are, beside the weights, for transformers' dynamic-module loader (which copies
sibling files only). ``tests/test_layout.py`` checks that they import no other vlm_swap module.

Importing this package costs nothing; ``register()`` (run by ``import vlm_swap``) imports the classes and
registers them with transformers' Auto classes, and the classes themselves are importable from here.
"""

from __future__ import annotations

import importlib

#: the public classes, by the module of this package that defines them
CLASSES = {
    "SwapVLMConfig": "configuration_swap_vlm",
    "SwapVLMPreTrainedModel": "modeling_swap_vlm",
    "SwapVLMForConditionalGeneration": "modeling_swap_vlm",
    "SwapVLMProcessor": "processing_swap_vlm",
}


def __getattr__(name: str):
    if name in CLASSES:
        return getattr(importlib.import_module(f".{CLASSES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register() -> None:
    """Register the format with ``AutoConfig``, ``AutoModelForImageTextToText`` and ``AutoProcessor``."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from .configuration_swap_vlm import SwapVLMConfig
    from .modeling_swap_vlm import SwapVLMForConditionalGeneration
    from .processing_swap_vlm import SwapVLMProcessor

    AutoConfig.register(SwapVLMConfig.model_type, SwapVLMConfig, exist_ok=True)
    AutoModelForImageTextToText.register(SwapVLMConfig, SwapVLMForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(SwapVLMConfig, SwapVLMProcessor, exist_ok=True)


__all__ = [*CLASSES, "register"]
