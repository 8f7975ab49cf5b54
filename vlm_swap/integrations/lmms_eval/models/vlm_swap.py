"""The lmms-eval model class ``vlm_swap``; imported by lmms-eval only, so lmms_eval is importable here.

Requests are unpacked (documents looked up in ``task_dict``, visuals from ``doc_to_visual``) and
handed to :class:`vlm_swap.integrations.lmms_eval.runner.Runner`, which does the work. lmms-eval
prints an exception's message on one line ("Error during evaluation: ..."), so every error the
plug-in raises is a :class:`VlmSwapError` that starts with ``vlm_swap:`` and names the cause.
"""

from __future__ import annotations

import functools
from importlib.metadata import version

from lmms_eval.api.model import lmms
from lmms_eval.utils import simple_parse_args_string

from vlm_swap.errors import VlmSwapError
from vlm_swap.integrations.lmms_eval.runner import Runner, images_of

OPTIONS = ("pretrained", "device", "batch_size", "dtype", "max_batch_size")


def _one_line(method):
    """Our errors reach lmms-eval's log as one line that names the plug-in."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except VlmSwapError as exc:
            if str(exc).startswith("vlm_swap:"):
                raise
            raise VlmSwapError(f"vlm_swap: {exc}") from None

    return wrapper


def likelihoods_reach_tasks() -> bool:
    """False where lmms-eval turns every non-text response into text before the task sees it
    (``unwrap_generation_output``, lmms-eval 0.7.0-0.7.3): ``(loss, is_greedy)`` pairs then arrive as
    strings, and ``multiple_choice`` / ``loglikelihood`` tasks crash for any model."""
    try:
        from lmms_eval.api.instance import unwrap_generation_output
    except ImportError:  # before 0.7 responses are kept as the model returns them
        return True
    return unwrap_generation_output((1.0, True))[0] == (1.0, True)


class VlmSwap(lmms):
    """``--model vlm_swap --model_args pretrained=DIR[,dtype=bfloat16,device=cuda,batch_size=N]``.

    ``batch_size`` comes from ``--batch_size`` too; the one in ``model_args`` takes precedence.
    ``--batch_size auto`` is refused, and ``--max_batch_size`` (which only sizes ``auto``) ignored.
    """

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> VlmSwap:
        """``model_args`` first, then lmms-eval's own settings (``--batch_size``, ``--device``) for the rest."""
        args = simple_parse_args_string(arg_string)
        unknown = sorted(set(args) - set(OPTIONS))
        if unknown:
            raise VlmSwapError(f"vlm_swap: unknown model_args {', '.join(unknown)}; it takes {', '.join(OPTIONS)}")
        extra = {k: v for k, v in (additional_config or {}).items() if k in OPTIONS and k not in args and v is not None}
        return cls(**args, **extra)

    @_one_line
    def __init__(
        self,
        pretrained: str | None = None,
        device: str | None = None,
        batch_size: int | str = 1,
        dtype: str = "auto",
        max_batch_size: int | None = None,
    ):
        super().__init__()
        if not pretrained:
            raise VlmSwapError("model_args needs pretrained=DIR (an upgraded model or a training run)")
        from accelerate import PartialState

        state = PartialState()
        if device is None and state.num_processes > 1:
            device = str(state.device)
        self.runner = Runner(
            str(pretrained), device=device, batch_size=batch_size, dtype=dtype, progress=state.is_main_process
        )
        self._rank, self._world_size = state.process_index, state.num_processes

    @property
    def device(self):
        """Where the model runs (lmms-eval gathers request counts on it across processes)."""
        return self.runner.model.device

    def _doc(self, task: str, split: str, doc_id: int):
        return self.task_dict[task][split][doc_id]

    @_one_line
    def generate_until(self, requests) -> list[str]:
        contexts, visuals, kwargs = [], [], []
        for context, gen_kwargs, doc_to_visual, doc_id, task, split in (r.args for r in requests):
            contexts.append(context)
            visuals.append(images_of(doc_to_visual(self._doc(task, split, doc_id))))
            kwargs.append(dict(gen_kwargs))
        return self.runner.generate_until(contexts, visuals, kwargs)

    @_one_line
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """(loss, is_greedy) per request, the loss as lmms-eval's own models return it: lower is likelier."""
        if not likelihoods_reach_tasks():
            raise VlmSwapError(
                f"lmms-eval {version('lmms_eval')} turns every model's log-likelihoods into text before scoring "
                "(its unwrap_generation_output), so multiple_choice and loglikelihood tasks cannot be scored; "
                'use lmms-eval 0.6.1 (pip install "vlm-swap[lmms-eval]") or generate_until tasks only'
            )
        contexts, continuations, visuals = [], [], []
        for context, doc_to_target, doc_to_visual, doc_id, task, split in (r.args for r in requests):
            doc = self._doc(task, split, doc_id)
            contexts.append(context)
            continuations.append(doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc))
            visuals.append(images_of(doc_to_visual(doc)))
        return self.runner.loglikelihood(contexts, continuations, visuals)

    def generate_until_multi_round(self, requests) -> list[str]:
        raise VlmSwapError("vlm_swap: answers single-round requests only (generate_until, loglikelihood)")
