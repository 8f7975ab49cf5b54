"""Token planning: the placeholder and pad tokens the upgraded model needs, and the LLM config that fits them.

The image token is the source's own when its config names one, else the LLM family's; an encoder
with boundaries (perceivers) also needs the family's vision-start and vision-end tokens. Tokens the
tokenizer lacks are added (special), and a pad token is set when the LLM has none or pads with eos.
The plan is made before any weight is read, so every LLM tensor of the output (embedding rows of
the added tokens included) is known before the encoder is opened. ``template_is_text_only`` says
whether the chat template can render image entries, which the processor then does for it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from transformers import PreTrainedConfig

from ..errors import VlmSwapError
from ..llms import LLMFamily


@dataclass
class TokenPlan:
    """Placeholder tokens of the target after the upgrade."""

    image_token: str
    image_start: str
    image_end: str
    added: list[str]
    pad_token: str | None  # set when pad was missing or equal to eos

    def feature_tokens(self) -> list[str]:
        return [t for t in (self.image_start, self.image_token, self.image_end) if t]


def plan_tokens(tokenizer, family: LLMFamily, image_token_id: int | None, boundaries: bool) -> TokenPlan:
    """Add the placeholder (and pad) tokens the target lacks to ``tokenizer``; say what was done."""
    vocab = tokenizer.get_vocab()
    image_token = family.image_token
    if image_token_id is not None:
        known = type(image_token_id) is int and 0 <= image_token_id < len(tokenizer)
        image_token = tokenizer.convert_ids_to_tokens(image_token_id) if known else None
        if image_token is None:
            raise VlmSwapError(
                f"the source's config names image token id {image_token_id!r}, which its tokenizer does not have "
                f"({len(tokenizer)} tokens): config/tokenizer mismatch"
            )
    start, end = (family.vision_start, family.vision_end) if boundaries else ("", "")
    added = [t for t in dict.fromkeys((start, image_token, end)) if t and t not in vocab]
    pad = None
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        pad = next((t for t in family.pad_candidates if t in vocab and t != tokenizer.eos_token), "<|pad|>")
        if pad not in vocab:
            added.append(pad)
    if added:
        tokenizer.add_tokens(added, special_tokens=True)
    if pad is not None:
        tokenizer.pad_token = pad
    return TokenPlan(image_token, start, end, added, pad)


def template_is_text_only(tokenizer, chat_template: str | None, image_token: str) -> bool:
    """True when the chat template cannot render image entries (most LLM templates)."""
    if not chat_template:
        return True
    probe = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    try:
        text = tokenizer.apply_chat_template(probe, chat_template=chat_template, tokenize=False)
    except Exception:
        return True
    return image_token not in text


@dataclass(frozen=True)
class Target:
    """The LLM side of the output, planned: its tokens and its config as the output has it."""

    tokens: TokenPlan
    text_config: PreTrainedConfig  # vocab_size grown to the tokenizer, pad_token_id set
    new_ids: list[int]  # ids of the added tokens: their embedding rows are new
    feature_ids: dict[str, int]  # placeholder token -> id, in the order the rows come (start, image, end)


def plan_target(
    tokenizer, text_config: PreTrainedConfig, family: LLMFamily, image_token_id: int | None, boundaries: bool
) -> Target:
    """Plan the tokens (``plan_tokens``, added to ``tokenizer``) and the output's LLM config (a copy)."""
    text_config = copy.deepcopy(text_config)
    tokens = plan_tokens(tokenizer, family, image_token_id, boundaries)
    text_config.vocab_size = max(text_config.vocab_size, len(tokenizer))
    text_config.pad_token_id = tokenizer.pad_token_id
    return Target(
        tokens=tokens,
        text_config=text_config,
        new_ids=[tokenizer.convert_tokens_to_ids(t) for t in tokens.added],
        feature_ids={t: tokenizer.convert_tokens_to_ids(t) for t in tokens.feature_tokens()},
    )
