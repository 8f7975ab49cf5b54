"""Pair checks between an encoder and an LLM, used by ``vlm-swap pairs`` and before upgrades.

Each check returns ok / warn / fail with the reason computed from the facts: widths (the
connector maps any width, but both must be known), the image-token budget against the LLM's
context, placeholder tokens (present, or added with new embedding rows), pad != eos, and the
text family (same family is expected to align more deeply, DPA's premise; it is reported, not
enforced, since only hidden states cross over).

The end of the file holds every use of a private API of a dependency, each behind one wrapper with a
test (transformers' loading rules, used to stream an encoder's weights as ``from_pretrained`` would
load them; accelerate's FSDP state on CPU).
"""

from __future__ import annotations

import os
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


# ---- transformers internals: what ``from_pretrained`` does with a checkpoint, without loading it ---------------


def hf_auto_dtype(config, files: list, sharded_metadata: dict | None) -> None:
    """Set ``config.dtype`` (and its sub-configs') as ``from_pretrained(dtype="auto")`` does for these weight files:
    the config's own dtype, else the index's, else the first floating tensor's of the first file."""
    from transformers.modeling_utils import _get_dtype

    _get_dtype("auto", [str(f) for f in files], config, sharded_metadata, None, True)


def hf_checkpoint_keys(model, keys) -> dict[str, str] | None:
    """Where ``type(model).from_pretrained`` puts the checkpoint tensors ``keys``: {state-dict key of ``model``:
    checkpoint key} for those it loads (others are unexpected there, and skipped). None when loading would do more
    than rename: a transformers ``WeightConverter`` fusing or splitting tensors, or two keys for one weight.

    The rules of ``transformers.core_model_loading.convert_and_load_state_dict_in_model``: the renamings of the
    model's conversion mapping (legacy layouts), then the base-model prefix added or stripped."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    meta, prefix = model.state_dict(), model.base_model_prefix
    found: dict[str, str] = {}
    for key in keys:
        target, converter = rename_source_key(key, renamings, converters, prefix, meta)
        if target not in meta and key in meta:  # a renaming that should not have fired: only the prefix rule
            target, converter = rename_source_key(key, [], [], base_model_prefix=prefix, meta_state_dict=meta)
        if target not in meta:
            continue
        if converter is not None or target in found:
            return None
        found[target] = key
    return found


def keep_fsdp_on_cpu(accelerator) -> bool:
    """Run an ``accelerate launch`` FSDP config as FSDP on CPU processes (gloo) too; True when it does.

    accelerate's ``AcceleratorState`` enables FSDP only on accelerator devices: on CPU it silently runs
    the config as DDP. FSDP2 (``fully_shard``) itself runs on CPU over gloo, so the state's distributed
    type is switched back to FSDP, with the plugin read from the launcher's ``FSDP_*`` variables. Every
    ``Accelerator`` re-reads the process state when it is built, so this runs after each one.
    """
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return False
    state = accelerator.state
    if state.distributed_type == DistributedType.MULTI_CPU:
        state.distributed_type = DistributedType.FSDP
        if getattr(state, "fsdp_plugin", None) is None:
            state.fsdp_plugin = FullyShardedDataParallelPlugin()
    return state.distributed_type == DistributedType.FSDP
