"""The request handling behind lmms-eval's ``--model vlm_swap``, without lmms_eval itself.

lmms-eval ("simple" models) sends ``generate_until`` requests (a context, generation kwargs and the
document's images) and ``loglikelihood`` requests (a context, a continuation and the images).
:class:`Runner` answers both in batches on top of ``vlm_swap.api.load_any`` and the model's processor:
the prompt is the model's own chat template with the images first and the context as the user
turn (``vlm_swap.generation.build_prompt``, as ``vlm-swap generate`` does), unless the context
already holds the image token, in which case the images go where it stands. Generation is greedy
unless the request asks for sampling (``temperature > 0``) and stops at the request's ``until``
strings. A log-likelihood is the sum of the continuation tokens' log-probabilities, with whether
each of them is the greedy token (lm-eval's convention).
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from ...api import load_any
from ...generation import build_prompt

DEFAULT_MAX_NEW_TOKENS = 1024


def images_of(visuals: Any) -> list[Image.Image]:
    """A document's visuals (an image, a list of them, or None) as RGB images; video is refused."""
    if visuals is None:
        return []
    items = visuals if isinstance(visuals, (list, tuple)) else [visuals]
    out = []
    for item in items:
        if not isinstance(item, Image.Image):
            raise ValueError(f"vlm_swap evaluates images, not {type(item).__name__} visuals")
        out.append(item.convert("RGB"))
    return out


class Runner:
    """An upgraded model (or training run) answering lmms-eval requests in batches of ``batch_size``."""

    def __init__(self, pretrained: str, *, device: str | None = None, batch_size: int = 1, dtype: str = "auto"):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        # any model vlm-swap evaluates: an upgraded model, a training run, or the untouched source VLM
        self.model, self.processor = load_any(pretrained, dtype=None if dtype == "auto" else getattr(torch, dtype))
        self.model.to(device)
        self.batch_size = max(1, int(batch_size))
        self.tokenizer = self.processor.tokenizer

    def prompt(self, context: str, n_images: int) -> str:
        if n_images and self.processor.image_token in context:
            messages = [{"role": "user", "content": [{"type": "text", "text": context}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return build_prompt(self.processor, context, n_images)

    def _inputs(self, texts: list[str], images: list[list[Image.Image]], side: str) -> dict:
        flat = [img for row in images for img in row]
        saved, self.tokenizer.padding_side = self.tokenizer.padding_side, side
        try:
            inputs = self.processor(
                images=flat or None, text=texts, padding=True, add_special_tokens=False, return_tensors="pt"
            )
        finally:
            self.tokenizer.padding_side = saved
        return inputs.to(self.model.device)

    @torch.inference_mode()
    def generate_until(
        self, contexts: list[str], visuals: list[list[Image.Image]], gen_kwargs: list[dict]
    ) -> list[str]:
        """Answers in request order; consecutive requests with equal kwargs share a batch."""
        answers: list[str] = []
        start = 0
        while start < len(contexts):
            end = start + 1
            while end < len(contexts) and end - start < self.batch_size and gen_kwargs[end] == gen_kwargs[start]:
                end += 1
            answers += self._generate(contexts[start:end], visuals[start:end], dict(gen_kwargs[start]))
            start = end
        return answers

    def _generate(self, contexts: list[str], visuals: list[list[Image.Image]], kwargs: dict) -> list[str]:
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(kwargs.get("temperature", 0) or 0)
        sample = bool(kwargs.get("do_sample", False)) or temperature > 0
        options = {
            "max_new_tokens": int(kwargs.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)),
            "do_sample": sample,
            "num_beams": int(kwargs.get("num_beams", 1)),
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if sample:
            options.update(temperature=temperature or 1.0, top_p=float(kwargs.get("top_p") or 1.0))
        texts = [self.prompt(c, len(v)) for c, v in zip(contexts, visuals, strict=True)]
        inputs = self._inputs(texts, visuals, "left")
        out = self.model.generate(**inputs, **options)
        decoded = self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return [_cut(text, until) for text in decoded]

    @torch.inference_mode()
    def loglikelihood(
        self, contexts: list[str], continuations: list[str], visuals: list[list[Image.Image]]
    ) -> list[tuple[float, bool]]:
        """(sum of log-probs of the continuation tokens, all of them greedy) per request."""
        results: list[tuple[float, bool]] = []
        for start in range(0, len(contexts), self.batch_size):
            rows = range(start, min(start + self.batch_size, len(contexts)))
            prompts = [self.prompt(contexts[i], len(visuals[i])) for i in rows]
            inputs = self._inputs(prompts, [visuals[i] for i in rows], "right")
            prompt_lens = inputs["attention_mask"].sum(1).tolist()  # [B]
            # the continuation is tokenized on its own and appended, so the prompt's tokens stay as they are
            conts = [self.tokenizer(continuations[i], add_special_tokens=False)["input_ids"] for i in rows]
            full_lens = [p + len(c) for p, c in zip(prompt_lens, conts, strict=True)]
            ids = torch.full((len(conts), max(full_lens)), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for b, (p, c) in enumerate(zip(prompt_lens, conts, strict=True)):
                ids[b, :p] = inputs["input_ids"][b, :p]
                ids[b, p : p + len(c)] = torch.tensor(c, dtype=torch.long)
                mask[b, : p + len(c)] = 1
            inputs["input_ids"], inputs["attention_mask"] = ids.to(self.model.device), mask.to(self.model.device)
            logprobs = self.model(**inputs).logits.float().log_softmax(-1)  # [B, L, V]
            for b in range(len(rows)):
                p, n = prompt_lens[b], full_lens[b]
                targets = inputs["input_ids"][b, p:n]  # continuation tokens
                scores = logprobs[b, p - 1 : n - 1]  # the position before each predicts it
                total = float(scores.gather(-1, targets[:, None]).sum())
                results.append((total, bool((scores.argmax(-1) == targets).all())))
        return results


def _cut(text: str, until: list[str]) -> str:
    """``text`` up to the first stop string."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text
