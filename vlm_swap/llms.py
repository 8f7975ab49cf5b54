"""LLM families: placeholder tokens, chat-template quirks and pad/eos rules.

A family is detected from the LLM's ``model_type`` (and, where one model_type covers several
families such as Llama 2 and Llama 3, from the tokenizer's vocabulary). It tells vlm-swap which
tokens stand for an image in the prompt, which must be added when the tokenizer lacks them, how
to pick a pad token distinct from eos, and what to mask out of the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import VlmSwapError
from .registry import Registry


@dataclass(frozen=True)
class LLMFamily:
    """What vlm-swap must know about one text-model family."""

    id: str
    help: str
    model_types: tuple[str, ...]
    image_token: str  # one per image in prompts; expanded to N copies by the processor
    vision_start: str  # wraps a perceiver's N + 2 rows
    vision_end: str
    pad_candidates: tuple[str, ...]  # first one present in the vocab becomes pad when pad is missing or == eos
    marker_tokens: tuple[str, ...] = ()  # a vocab token that tells this family apart inside a shared model_type
    empty_think: str | None = None  # masked out of the loss (Qwen3's "<think>\n\n</think>\n\n")

    def matches(self, model_type: str, vocab: dict[str, int] | None) -> bool:
        if model_type not in self.model_types:
            return False
        if self.marker_tokens and vocab is not None:
            return any(t in vocab for t in self.marker_tokens)
        return True


LLMS: Registry[LLMFamily] = Registry("LLM family")
for _fam in (
    LLMFamily(
        "qwen3",
        "Qwen3 (0.6B-32B); vision tokens already in the vocab; empty think block masked",
        ("qwen3", "qwen3_moe"),
        "<|image_pad|>",
        "<|vision_start|>",
        "<|vision_end|>",
        ("<|endoftext|>",),
        empty_think="<think>\n\n</think>\n\n",
    ),
    LLMFamily(
        "qwen2",
        "Qwen2 / Qwen2.5; vision tokens already in the vocab",
        ("qwen2", "qwen2_moe"),
        "<|image_pad|>",
        "<|vision_start|>",
        "<|vision_end|>",
        ("<|endoftext|>",),
    ),
    LLMFamily(
        "llama3",
        "Llama 3.x; no image tokens: <image> and boundary tokens are added",
        ("llama",),
        "<image>",
        "<|vision_start|>",
        "<|vision_end|>",
        ("<|finetune_right_pad_id|>", "<|reserved_special_token_0|>"),
        marker_tokens=("<|begin_of_text|>", "<|eot_id|>"),
    ),
    LLMFamily(
        "mistral",
        "Mistral 7B ([INST] template); <image> and boundary tokens are added",
        ("mistral",),
        "<image>",
        "<|vision_start|>",
        "<|vision_end|>",
        ("<unk>",),
    ),
    LLMFamily(
        "gemma3",
        "Gemma 3; its own image tokens (<start_of_image>, <image_soft_token>, <end_of_image>)",
        ("gemma3_text", "gemma3"),
        "<image_soft_token>",
        "<start_of_image>",
        "<end_of_image>",
        ("<pad>",),
    ),
    LLMFamily(
        "gemma2",
        "Gemma 2; <image> and boundary tokens are added",
        ("gemma2",),
        "<image>",
        "<|vision_start|>",
        "<|vision_end|>",
        ("<pad>",),
    ),
    LLMFamily(
        "llama2",
        "Llama 2 / Vicuna (LLaVA-1.5); <image> added when absent",
        ("llama",),
        "<image>",
        "<|vision_start|>",
        "<|vision_end|>",
        ("<unk>",),
    ),
):
    LLMS.register(_fam.id, _fam)


def detect_family(model_type: str, vocab: dict[str, int] | None = None) -> LLMFamily:
    """The family of an LLM from its ``model_type`` (and vocab where a model_type is shared)."""
    for _, fam in LLMS.items():
        if fam.marker_tokens and fam.matches(model_type, vocab):
            return fam
    for _, fam in LLMS.items():
        if not fam.marker_tokens and fam.matches(model_type, vocab):
            return fam
    known = sorted({t for _, f in LLMS.items() for t in f.model_types})
    raise VlmSwapError(f"LLM model_type {model_type!r} is not a supported family (supported: {', '.join(known)})")
