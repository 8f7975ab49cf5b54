"""Every use of a private API of a dependency, each behind one small wrapper with a test (``tests/test_compat.py``).

A dependency's release may change what is not its public API without notice; here each such use is one function,
named for what vlm-swap needs from it, so a break shows in one test and is fixed in one place:

- transformers: what ``from_pretrained`` does with a checkpoint without loading it (dtype, key renaming), the
  auto-class names of a model type, weight initialisation switched off, the directory a model was loaded from,
  LLaVA-OneVision's count of image features, the Trainer's checkpoint directory and rotation;
- accelerate: its FSDP state on CPU processes; DeepSpeed: which parameters have a float32 master;
- torch: the norms of many tensors at once, a tensor allocated in shared memory, and the fallback for pickle
  files that cannot be memory-mapped;
- open_clip: its vision-tower builder; safetensors: the OS error inside its error text.

Methods vlm-swap overrides (transformers' ``GenerationMixin._validate_model_kwargs``, ``ProcessorMixin.
_process_images``, the Trainer's ``_save_checkpoint`` and ``_get_train_sampler``) and the ``_no_split_modules``
attribute it reads cannot go through a wrapper: the tests pin their existence, signature and use instead.

The module is part of the model format (``vlm_swap/format``), which a remote-code export ships as it is: the
run-time code uses two of its wrappers (LLaVA-OneVision's row count, open_clip's tower builder). So it imports no
dependency at module level (it is cheap to import), and the optional libraries (accelerate, open_clip) are
imported inside ``try`` blocks, which transformers' check of a remote model's imports skips: an exported model
loads without them unless it uses them.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

# ---- transformers: what ``from_pretrained`` does with a checkpoint, without loading it -----------------------


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


#: which auto class a catalog architecture names: its role -> the auto mapping of transformers' modeling_auto
AUTO_MAPPINGS = {
    "llm": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "vit": "MODEL_MAPPING_NAMES",
    "image-text-to-text": "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
}


def hf_architecture(task: str, model_type: str) -> str:
    """The model class transformers' auto classes build for ``model_type`` as ``task`` (a key of ``AUTO_MAPPINGS``):
    ``("llm", "llama")`` -> ``LlamaForCausalLM``; a KeyError for a model type the mapping lacks."""
    from transformers.models.auto import modeling_auto

    return getattr(modeling_auto, AUTO_MAPPINGS[task])[model_type]


def no_weight_init():
    """A context in which building a transformers model (or a torch module) initialises no weight: torch's
    ``nn.init`` functions and ``PreTrainedModel.init_weights`` do nothing (used with ``torch.device("meta")``)."""
    from transformers.initialization import no_init_weights

    return no_init_weights()


def loaded_from(model) -> Path:
    """The path ``from_pretrained`` was given for ``model`` (a peft model: its base's), kept in its config; a local
    directory whenever the model came from ``vlm_swap.load``, which resolves hub ids to their local snapshot."""
    return Path(model.config.name_or_path)


def llava_onevision_features(
    height: int, width: int, view_h: int, view_w: int, *, pinpoints, num_image_tokens: int, vision_aspect_ratio: str
) -> int:
    """Image features (base view + unpadded grid + newline rows) LLaVA-OneVision's processor gives an image of
    ``height x width`` cut into ``view_h x view_w`` views: its own counting rule, on its attributes alone (no
    tokenizer, no image processor, no pixels)."""
    from types import SimpleNamespace

    from transformers import LlavaOnevisionProcessor

    counter = LlavaOnevisionProcessor.__new__(LlavaOnevisionProcessor)
    counter.image_processor = SimpleNamespace(image_grid_pinpoints=pinpoints)
    counter.num_image_tokens = num_image_tokens
    counter.vision_aspect_ratio = vision_aspect_ratio
    return counter._get_number_of_features(height, width, view_h, view_w)


# ---- transformers' Trainer: where a checkpoint is written, and which are kept ------------------------------


def trainer_output_dir(trainer, trial=None) -> Path:
    """The directory under which ``trainer`` writes a trial's ``checkpoint-N`` folders."""
    return Path(trainer._get_output_dir(trial=trial))


@contextlib.contextmanager
def checkpoints_written_under(trainer, directory: Path) -> Iterator[None]:
    """Within the block, ``Trainer._save_checkpoint`` of ``trainer`` writes its ``checkpoint-N`` folder under
    ``directory`` (it asks ``_get_output_dir`` for the run directory) instead of the output dir."""
    trainer._get_output_dir = lambda trial=None: str(directory)
    try:
        yield
    finally:
        del trainer._get_output_dir


def rotate_checkpoints(directory: Path, limit: int | None, best: str | None) -> None:
    """Delete the oldest ``checkpoint-N`` folders of ``directory`` (by step) beyond ``limit``, as the Trainer does
    after a save: the newest and ``best`` are always kept; no limit keeps all."""
    from transformers.trainer_utils import rotate_checkpoints as rotate

    rotate(output_dir=str(directory), save_total_limit=limit, best_model_checkpoint=best, use_mtime=False)


# ---- accelerate and DeepSpeed: distributed state ------------------------------------------------------------


def keep_fsdp_on_cpu(accelerator) -> bool:
    """Run an ``accelerate launch`` FSDP config as FSDP on CPU processes (gloo) too; True when it does.

    accelerate's ``AcceleratorState`` enables FSDP only on accelerator devices: on CPU it silently runs
    the config as DDP. FSDP2 (``fully_shard``) itself runs on CPU over gloo, so the state's distributed
    type is switched back to FSDP, with the plugin read from the launcher's ``FSDP_*`` variables. Every
    ``Accelerator`` re-reads the process state when it is built, so this runs after each one.
    """
    try:
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    except ImportError:  # no accelerate, no launcher
        return False

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return False
    state = accelerator.state
    if state.distributed_type == DistributedType.MULTI_CPU:
        state.distributed_type = DistributedType.FSDP
        if getattr(state, "fsdp_plugin", None) is None:
            state.fsdp_plugin = FullyShardedDataParallelPlugin()
    return state.distributed_type == DistributedType.FSDP


def deepspeed_zero_mapped(param) -> bool:
    """A parameter that a DeepSpeed ZeRO-1/2 optimizer links to its float32 master fragment (``link_hp_params``
    gives it ``_hp_mapping``); ``deepspeed.utils.safe_get_full_fp32_param`` then reads the master."""
    return hasattr(param, "_hp_mapping")


# ---- torch ------------------------------------------------------------------------------------------------


def tensor_norms(tensors: list) -> list:
    """The 2-norm of each tensor (0-d tensors, on the tensors' devices), in one fused kernel per device and dtype."""
    import torch

    return list(torch._foreach_norm(tensors))


def empty_shared(like, shape: tuple[int, ...]):
    """An uninitialised tensor of ``like``'s dtype and ``shape`` in shared memory, as torch's own collate allocates
    a batch in a DataLoader worker: the batch then crosses to the training process without a copy.
    (``Tensor.share_memory_`` on a new tensor would copy it once more.)"""
    storage = like._typed_storage()._new_shared(math.prod(shape), device=like.device)
    return like.new(storage).view(shape)


def torch_load_tensors(path: Path):
    """``torch.load`` of a pickle file with ``weights_only=True``, memory-mapped when its format allows (the zip
    format); the legacy format, which torch refuses to map, is read whole."""
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):  # torch's refusal names mmap; anything else is a real error
            raise
        return torch.load(str(path), map_location="cpu", weights_only=True)


# ---- open_clip and safetensors ------------------------------------------------------------------------------


def open_clip_vision_tower(embed_dim: int, vision_cfg: dict, quick_gelu: bool = False):
    """The visual tower open_clip's own CLIP classes build from a model config's ``vision_cfg`` (randomly
    initialised)."""
    try:
        from open_clip.model import _build_vision_tower
    except ImportError as exc:
        raise ImportError(f"an open-clip encoder needs open_clip: pip install open_clip_torch ({exc})") from exc
    return _build_vision_tower(embed_dim, vision_cfg, quick_gelu=quick_gelu)


SAFETENSORS_OS_ERROR = re.compile(r"os error (\d+)")


def safetensors_errno(exc: BaseException) -> int | None:
    """The OS error number a safetensors error wraps (``... (os error 28) ...`` in its message), else None."""
    from safetensors import SafetensorError

    m = SAFETENSORS_OS_ERROR.search(str(exc)) if isinstance(exc, SafetensorError) else None
    return int(m.group(1)) if m else None
