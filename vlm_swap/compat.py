"""Every use of a private API of a dependency, each behind one wrapper with a test: transformers' loading rules,
used to stream an encoder's weights as ``from_pretrained`` would load them; accelerate's FSDP state on CPU.
"""

from __future__ import annotations

import os

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
