"""The lmms-eval model class ``vlm_swap``; imported by lmms-eval only, so lmms_eval is importable here.

Requests are unpacked (documents looked up in ``task_dict``, visuals from ``doc_to_visual``) and
handed to :class:`vlm_swap.integrations.lmms_eval.runner.Runner`, which does the work.
"""

from __future__ import annotations

from lmms_eval.api.model import lmms

from vlm_swap.integrations.lmms_eval.runner import Runner, images_of


class VlmSwap(lmms):
    """``--model vlm_swap --model_args pretrained=DIR[,batch_size=N,dtype=bfloat16,device=cuda]``."""

    def __init__(self, pretrained: str, device: str | None = None, batch_size: int = 1, dtype: str = "auto", **_):
        super().__init__()
        from accelerate import PartialState

        state = PartialState()
        if device is None and state.num_processes > 1:
            device = str(state.device)
        self.runner = Runner(pretrained, device=device, batch_size=int(batch_size), dtype=dtype)
        self._rank, self._world_size = state.process_index, state.num_processes

    def _doc(self, task: str, split: str, doc_id: int):
        return self.task_dict[task][split][doc_id]

    def generate_until(self, requests) -> list[str]:
        contexts, visuals, kwargs = [], [], []
        for context, gen_kwargs, doc_to_visual, doc_id, task, split in (r.args for r in requests):
            contexts.append(context)
            visuals.append(images_of(doc_to_visual(self._doc(task, split, doc_id))))
            kwargs.append(dict(gen_kwargs))
        return self.runner.generate_until(contexts, visuals, kwargs)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        contexts, continuations, visuals = [], [], []
        for context, doc_to_target, doc_to_visual, doc_id, task, split in (r.args for r in requests):
            doc = self._doc(task, split, doc_id)
            contexts.append(context)
            continuations.append(doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc))
            visuals.append(images_of(doc_to_visual(doc)))
        return self.runner.loglikelihood(contexts, continuations, visuals)

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("vlm_swap answers single-round requests (generate_until, loglikelihood)")
