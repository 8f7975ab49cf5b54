"""lmms-eval plug-in: ``--model vlm_swap`` evaluates an upgraded model or a training run.

lmms-eval finds the model class in two ways, both served here:
- the ``lmms_eval.models`` entry point (declared in pyproject.toml; lmms-eval 0.6.1 and later) calls
  :func:`manifest`, so an installed vlm-swap is enough;
- the older, now deprecated ``LMMS_EVAL_PLUGINS=vlm_swap.integrations.lmms_eval`` makes lmms-eval
  read ``models.AVAILABLE_MODELS`` and the (empty) ``tasks`` package of this one.

The request handling lives in :mod:`.runner` and does not need lmms_eval; the class in
``models/vlm_swap.py`` is imported by lmms-eval only.
"""

from __future__ import annotations

MODEL_ID = "vlm_swap"
CLASS_PATH = f"{__name__}.models.vlm_swap.VlmSwap"


def manifest():
    """The ``ModelManifest`` of ``--model vlm_swap`` (entry point of group ``lmms_eval.models``)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)
