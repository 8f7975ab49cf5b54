"""vlm-swap: upgrade LLaVA-style VLMs by swapping their vision side (Deep Pre-Alignment perceivers, ViTs).

Importing the package registers the upgraded-model classes with transformers' Auto classes, so
``AutoModelForImageTextToText.from_pretrained(dir)`` and ``AutoProcessor.from_pretrained(dir)``
load an upgraded model.
"""

__version__ = "0.1.0"

from .errors import VlmSwapError, quiet_interrupt_while_starting  # noqa: E402

with quiet_interrupt_while_starting():  # torch and transformers take seconds to import
    from . import modeling  # noqa: E402  (registers the Auto classes)
    from .api import load  # noqa: E402
    from .surgery.pipeline import build, upgrade  # noqa: E402

__all__ = ["__version__", "build", "load", "modeling", "upgrade", "VlmSwapError"]
