"""lmms-eval benchmark scores of one model, as lmms-eval computes them, for ``vlm-swap compare --lmms-tasks``.

The model is evaluated by lmms-eval's own evaluator (``lmms_eval.evaluator.simple_evaluate``) through
this project's plug-in (``model="vlm_swap"``), exactly as ``python -m lmms_eval --model vlm_swap`` runs
it; only the per-task metrics are kept (``{task: {"metric,filter": value}}``, standard errors dropped).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from ...errors import VlmSwapError
from . import MODEL_ID

PLUGIN = __name__.rpartition(".")[0]  # this package, for LMMS_EVAL_PLUGINS

INSTALL_HINT = "pip install 'vlm-swap[lmms-eval]'"


def require_lmms_eval() -> None:
    if importlib.util.find_spec("lmms_eval") is None:
        raise VlmSwapError(f"--lmms-tasks needs lmms-eval, which is not installed: {INSTALL_HINT}")


def task_metrics(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The numeric metrics of each task in a ``simple_evaluate`` result (aliases and stderrs left out)."""
    out = {}
    for task, metrics in (results.get("results") or {}).items():
        kept = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and "_stderr" not in k
        }
        if kept:
            out[task] = kept
    return out


def run_tasks(pretrained: str, tasks: list[str], *, batch_size: int = 1, limit: int | None = None) -> dict:
    """Evaluate ``pretrained`` (an upgraded model, a training run or the source VLM) on lmms-eval ``tasks``."""
    require_lmms_eval()
    os.environ.setdefault("LMMS_EVAL_PLUGINS", PLUGIN)  # releases before 0.7 find the plug-in this way
    from lmms_eval.evaluator import simple_evaluate

    results = simple_evaluate(
        model=MODEL_ID,
        model_args=f"pretrained={pretrained}",
        tasks=list(tasks),
        batch_size=batch_size,
        limit=limit,
        log_samples=False,
    )
    if results is None:  # a non-main process of a distributed run
        return {}
    return task_metrics(results)
