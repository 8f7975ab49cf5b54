"""vlm-swap: upgrade LLaVA-style VLMs by swapping their vision side (Deep Pre-Alignment perceivers, ViTs).

Importing the package registers the upgraded-model classes with transformers' Auto classes, so
``AutoModelForImageTextToText.from_pretrained(dir)`` and ``AutoProcessor.from_pretrained(dir)``
load an upgraded model. The ``vlm-swap`` command is the exception: it imports torch, transformers
and the rest (``import_library``) for the commands that use them, so its help, listings, pair
checks and catalog inspections start at once.
"""

__version__ = "0.1.0"

from .errors import VlmSwapError, quiet_interrupt_while_starting, started_as_the_command  # noqa: E402


def import_library() -> None:
    """Import the model format (registering the Auto classes) and the API: what ``import vlm_swap`` does."""
    global build, load, upgrade
    with quiet_interrupt_while_starting():  # torch and transformers take seconds to import
        from . import format

        format.register()
        from .api import load
        from .surgery.pipeline import build, upgrade


if not started_as_the_command():
    import_library()

__all__ = ["__version__", "build", "load", "upgrade", "VlmSwapError"]
