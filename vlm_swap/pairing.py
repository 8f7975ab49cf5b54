"""Pair checks between an encoder and an LLM, used by ``vlm-swap pairs`` and before upgrades.

Each check returns ok / warn / fail with the reason computed from the facts: widths (the
connector maps any width, but both must be known), the image-token budget against the LLM's
context, placeholder tokens (present, or added with new embedding rows), pad != eos, and the
text family (same family is expected to align more deeply, DPA's premise; it is reported, not
enforced, since only hidden states cross over).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .catalog import CatalogEntry
from .connectors import CONNECTORS
from .errors import VlmSwapError


@dataclass(frozen=True)
class EncoderFacts:
    name: str
    kind: str
    feature_dim: int
    tokens_per_image: int  # rows per image the LLM receives (boundaries included)
    text_family: str | None = None  # perceivers: the family of their LM


@dataclass(frozen=True)
class LLMFacts:
    name: str
    family: str
    hidden_size: int
    context: int
    missing_tokens: tuple[str, ...] = ()  # placeholder tokens to add
    pad_fix: str | None = None  # the pad token that will be set, when pad is missing or == eos


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok" | "warn" | "fail"
    reason: str


def encoder_facts(entry: CatalogEntry) -> EncoderFacts:
    extra = 2 if entry.role == "perceiver" and entry.boundaries else 0
    text_family = entry.family if entry.role == "perceiver" else None
    return EncoderFacts(entry.id, entry.encoder_kind, entry.hidden_size, entry.tokens_per_image + extra, text_family)


def llm_facts(entry: CatalogEntry) -> LLMFacts:
    return LLMFacts(entry.id, entry.family, entry.hidden_size, entry.context)


def check_pair(enc: EncoderFacts, llm: LLMFacts, connector: str = "mlp2x-relu") -> list[Check]:
    checks = []
    if enc.feature_dim > 0 and llm.hidden_size > 0:
        n = CONNECTORS.get(connector).num_params(enc.feature_dim, llm.hidden_size)
        checks.append(
            Check(
                "hidden sizes",
                "ok",
                f"{connector} maps {enc.feature_dim} -> {llm.hidden_size} ({n / 1e6:.1f}M connector params)",
            )
        )
    else:
        checks.append(
            Check("hidden sizes", "fail", f"unknown width (encoder {enc.feature_dim}, LLM {llm.hidden_size})")
        )
    t, ctx = enc.tokens_per_image, llm.context
    if ctx <= 0:
        checks.append(Check("token budget", "warn", f"{t} tokens per image; LLM context unknown"))
    elif t >= ctx:
        checks.append(Check("token budget", "fail", f"{t} tokens per image do not fit a {ctx}-token context"))
    elif t > ctx // 4:
        checks.append(Check("token budget", "warn", f"{t} tokens per image use {100 * t // ctx}% of the {ctx} context"))
    else:
        checks.append(Check("token budget", "ok", f"{t} tokens per image in a {ctx}-token context"))
    if llm.missing_tokens:
        checks.append(Check("placeholder tokens", "ok", f"will add {', '.join(llm.missing_tokens)} (mean-initialised)"))
    else:
        checks.append(Check("placeholder tokens", "ok", "available in the LLM vocabulary or added at upgrade"))
    if llm.pad_fix:
        checks.append(Check("pad != eos", "ok", f"pad set to {llm.pad_fix}"))
    else:
        checks.append(Check("pad != eos", "ok", "pad distinct from eos"))
    if enc.text_family is None:
        checks.append(Check("text family", "ok", f"{enc.kind} encoder: features not in a text space (LLaVA-style)"))
    elif enc.text_family == llm.family:
        checks.append(Check("text family", "ok", f"same family ({llm.family}): deepest pre-alignment expected"))
    else:
        checks.append(
            Check(
                "text family",
                "warn",
                f"perceiver is {enc.text_family}, LLM is {llm.family}: works "
                "(only hidden states cross), same family expected to align better",
            )
        )
    return checks


def verdict(checks: list[Check]) -> str:
    statuses = {c.status for c in checks}
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok"


def require_compatible(checks: list[Check]) -> None:
    failed = [c for c in checks if c.status == "fail"]
    if failed:
        raise VlmSwapError("incompatible pair: " + "; ".join(f"{c.name}: {c.reason}" for c in failed))


def as_dicts(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]
