"""The request handling behind lmms-eval's ``--model vlm_swap``, without lmms_eval itself.

lmms-eval ("simple" models) sends ``generate_until`` requests (a context, generation kwargs and the
document's images) and ``loglikelihood`` requests (a context, a continuation and the images; a
``multiple_choice`` task sends one per option). :class:`Runner` answers both in batches on top of
``vlm_swap.api.load_any`` (an upgraded model, a training run or the untouched source VLM) and the
model's processor. The user turn is the images first and the context as text, as ``vlm-swap
generate`` and ``vlm-swap eval`` build it, unless the context already holds the image token, in
which case the images go where it stands.

- Generation is greedy unless the request asks for sampling (``temperature > 0``) and stops at the
  request's ``until`` strings.
- A log-likelihood is scored the way ``vlm-swap eval`` scores an option: the continuation is the
  assistant's answer, encoded by the training :class:`SampleEncoder` (chat template, the answer's end of
  turn included), and the result is the answer tokens' mean negative log-likelihood with whether
  each of them is the greedy token. That loss is what lmms-eval's own models return (its
  ``multiple_choice`` picks the option of lowest value), so the likeliest option wins.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from rich.progress import Progress

from ...api import load_any
from ...data import IGNORE, Collator, RowError, Sample, SampleEncoder, TooLong
from ...errors import VlmSwapError
from ...generation import left_padded

DEFAULT_MAX_NEW_TOKENS = 1024
DEFAULT_CONTEXT = 4096  # tokens, where the LLM's config names no max_position_embeddings


def images_of(visuals: Any) -> list[Image.Image]:
    """A document's visuals (an image, a list of them, or None) as RGB images; video is refused."""
    if visuals is None:
        return []
    items = visuals if isinstance(visuals, (list, tuple)) else [visuals]
    out = []
    for item in items:
        if not isinstance(item, Image.Image):
            raise VlmSwapError(f"vlm_swap evaluates images, not {type(item).__name__} visuals (video, audio, paths)")
        out.append(item.convert("RGB"))
    return out


def batch_size_of(value: Any) -> int:
    """``--batch_size`` / ``batch_size=`` as a positive int; ``auto`` is refused (no memory probing)."""
    text = str(value).strip()
    if text.startswith("auto"):
        raise VlmSwapError(
            f"batch size {text!r} is not supported: vlm_swap runs a fixed number of requests per batch; "
            "pass a number (--batch_size 8 or model_args batch_size=8)"
        )
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise VlmSwapError(f"batch size must be a positive integer, not {value!r}")
    return int(text)


def dtype_of(name: str) -> torch.dtype | None:
    """``dtype=auto`` (the checkpoint's own) or a torch floating dtype name such as ``bfloat16``."""
    if name == "auto":
        return None
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise VlmSwapError(f"dtype must be auto or a torch floating dtype (bfloat16, float16, float32), not {name!r}")
    return dtype


class Runner:
    """An upgraded model (or training run) answering lmms-eval requests in batches of ``batch_size``,
    with a progress bar over the requests when ``progress`` (lmms-eval's main process)."""

    def __init__(
        self,
        pretrained: str,
        *,
        device: str | None = None,
        batch_size: Any = 1,
        dtype: str = "auto",
        progress: bool = False,
    ):
        self.batch_size = batch_size_of(batch_size)
        self.progress = progress
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        # any model vlm-swap evaluates: an upgraded model, a training run, or the untouched source VLM
        self.model, self.processor = load_any(pretrained, dtype=dtype_of(dtype))
        self.model.to(device)
        self.tokenizer = self.processor.tokenizer
        context = getattr(self.model.config.get_text_config(), "max_position_embeddings", None) or DEFAULT_CONTEXT
        self.encoder = SampleEncoder(self.processor, context)
        self.collate = Collator(self.tokenizer.pad_token_id)

    def user_turn(self, context: str, n_images: int) -> dict:
        """The user message: images first, unless the context places them with the image token."""
        images = [] if self.processor.image_token in context else [{"type": "image"}] * n_images
        return {"role": "user", "content": [*images, {"type": "text", "text": context}]}

    def prompt(self, context: str, n_images: int) -> str:
        turn = self.user_turn(context, n_images)
        return self.processor.apply_chat_template([turn], add_generation_prompt=True, tokenize=False)

    def _inputs(self, texts: list[str], images: list[list[Image.Image]]) -> dict:
        flat = [img for row in images for img in row]
        try:
            with left_padded(self.tokenizer):
                inputs = self.processor(
                    images=flat or None, text=texts, padding=True, add_special_tokens=False, return_tensors="pt"
                )
        except ValueError as exc:  # e.g. image tokens in the context that do not match the images
            raise VlmSwapError(f"cannot build the model's inputs: {exc}") from None
        return inputs.to(self.model.device)

    @torch.inference_mode()
    def generate_until(
        self, contexts: list[str], visuals: list[list[Image.Image]], gen_kwargs: list[dict]
    ) -> list[str]:
        """Answers in request order; consecutive requests with equal kwargs share a batch."""
        answers: list[str] = []
        start = 0
        with Progress(transient=True, disable=not self.progress) as bar:
            task = bar.add_task("vlm_swap generate_until", total=len(contexts))
            while start < len(contexts):
                end = start + 1
                while end < len(contexts) and end - start < self.batch_size and gen_kwargs[end] == gen_kwargs[start]:
                    end += 1
                answers += self._generate(contexts[start:end], visuals[start:end], dict(gen_kwargs[start]))
                bar.advance(task, end - start)
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
        inputs = self._inputs(texts, visuals)
        out = self.model.generate(**inputs, **options)
        decoded = self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return [_cut(text, until) for text in decoded]

    def encode(self, context: str, continuation: str, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """One request as training encodes a row: labels on the answer (and its end of turn) only.

        lmms-eval puts its target delimiter (a space, meant for completion models) before the
        continuation; as an assistant turn the answer starts after the template's own separator.
        """
        answer = {"role": "assistant", "content": [{"type": "text", "text": continuation.lstrip()}]}
        sample = Sample(0, [self.user_turn(context, len(images)), answer], [])
        try:
            return self.encoder(sample, images=images)
        except (RowError, TooLong) as exc:
            raise VlmSwapError(f"cannot score the continuation {continuation!r}: {exc}") from None

    @torch.inference_mode()
    def loglikelihood(
        self, contexts: list[str], continuations: list[str], visuals: list[list[Image.Image]]
    ) -> list[tuple[float, bool]]:
        """(mean negative log-likelihood of the answer tokens, all of them greedy) per request."""
        results: list[tuple[float, bool]] = []
        with Progress(transient=True, disable=not self.progress) as bar:
            task = bar.add_task("vlm_swap loglikelihood", total=len(contexts))
            for start in range(0, len(contexts), self.batch_size):
                rows = range(start, min(start + self.batch_size, len(contexts)))
                results += self._score([self.encode(contexts[i], continuations[i], visuals[i]) for i in rows])
                bar.advance(task, len(rows))
        return results

    def _score(self, encoded: list[dict[str, torch.Tensor]]) -> list[tuple[float, bool]]:
        batch = self.collate(encoded)
        labels = batch.pop("labels")
        logits = self.model(**{k: v.to(self.model.device) for k, v in batch.items()}).logits  # [B, L, V]
        targets = labels[:, 1:].to(logits.device)  # [B, L-1]: the token that position t predicts
        scores = []
        for b in range(len(encoded)):
            where = (targets[b] != IGNORE).nonzero().squeeze(1)  # answer positions
            logprobs = logits[b, where].float().log_softmax(-1)  # [n, V]: only these are upcast
            tokens = targets[b, where]
            nll = -logprobs.gather(-1, tokens[:, None]).mean()
            scores.append((float(nll), bool((logprobs.argmax(-1) == tokens).all())))
        return scores


def _cut(text: str, until: list[str]) -> str:
    """``text`` up to the first stop string."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text
