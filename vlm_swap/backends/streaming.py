"""An encoder's weights as tensors of its checkpoint files: what ``upgrade`` copies without loading the encoder.

An upgrade needs the encoder module's config, widths and arguments, and the bytes its state dict would hold once
loaded; never the weights in memory (16 GB for an 8B perceiver). So a backend loading with ``LoadOptions(stream=True)``
builds its module on the meta device (no memory, no initialisation) and maps each state-dict key to the checkpoint
tensor that loading would have put there (``SourceTensor``: a byte range of a safetensors file, read only when
cast), following the loader it stands in for: transformers' key renaming for HF models (``hf_checkpoint_keys``),
the ``visual.`` prefix for open_clip. A checkpoint that loading would change beyond renaming keys (tensors fused
or split, weights it lacks and loading would initialise, tied weights, a quantized or pickle checkpoint) gives
None here, and the backend loads the encoder whole, as before.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..checkpoints.atomic import read_json
from ..checkpoints.resolve import INDEX_NAME, WEIGHTS_NAME, weight_files
from ..checkpoints.safe import load_pretrained
from ..checkpoints.tensors import SourceTensor, safetensors_tensors
from ..errors import VlmSwapError
from ..format.compat import hf_auto_dtype, hf_checkpoint_keys, no_weight_init

if TYPE_CHECKING:
    from .base import LoadOptions


def meta_module(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``build()`` on the meta device, without weight initialisation: names, shapes and dtypes only."""
    with torch.device("meta"), no_weight_init():
        return build()


def matched(module: torch.nn.Module, found: dict[str, SourceTensor], source: str) -> dict[str, SourceTensor] | None:
    """The state dict of ``module`` (on meta) as the tensors ``found`` for its keys, in the order of their files
    (and offsets), so that copies keep their offsets; None when a key has no tensor, parameters are shared (tied:
    loading would pick one), or a tensor is float where the module's is not (or of another non-float dtype)."""
    state = module.state_dict()
    tied = len(list(module.named_parameters(remove_duplicate=False))) != len(list(module.parameters()))
    if tied or set(found) != set(state):
        return None
    for key, want in state.items():
        t = found[key]
        if t.shape != tuple(want.shape):
            raise VlmSwapError(
                f"{source}: weight {key!r} has shape {list(t.shape)} where its config implies {list(want.shape)} "
                "(config/weights mismatch)"
            )
        floating = want.is_floating_point()
        if floating != t.dtype.is_floating_point or (not floating and t.dtype != want.dtype):
            return None  # loading would cast it to the module's dtype first
    files = list(dict.fromkeys(t.raw.path for t in found.values()))
    return dict(sorted(found.items(), key=lambda kv: (files.index(kv[1].raw.path), kv[1].raw.offset)))


def hf_weight_files(path: Path) -> tuple[list[Path], dict | None] | None:
    """The safetensors files ``from_pretrained`` reads from a local checkpoint dir, with the index metadata when
    sharded: ``model.safetensors`` first, else the index's shards; None when it would read pickle files."""
    if (path / WEIGHTS_NAME).is_file():
        return [path / WEIGHTS_NAME], None
    if (path / INDEX_NAME).is_file():
        return weight_files(path), dict(read_json(path / INDEX_NAME).get("metadata") or {})
    return None


def pretrained(
    model_cls,
    source: str,
    model_config,
    options: LoadOptions,
    build: Callable[[object], torch.nn.Module] | None = None,
    **kwargs,
) -> tuple[torch.nn.Module, dict[str, SourceTensor] | None]:
    """(the HF model at ``source``, its state dict as checkpoint tensors or None): with ``options.stream``, built
    from ``model_config`` on the meta device where ``stream_pretrained`` can map its weights; else, or when it
    cannot, loaded whole (``load_pretrained(model_cls, source, dtype=options.dtype, ..., **kwargs)``).
    ``build(config)`` makes the model (default ``model_cls(config)``), as ``model_cls.from_pretrained`` would."""
    streamed = None
    if options.stream:
        streamed = stream_pretrained(build or model_cls, model_config, source, allow_pickle=options.allow_pickle)
    if streamed is not None:
        return streamed
    model = load_pretrained(
        model_cls,
        source,
        dtype=options.dtype,
        trust_remote_code=options.trust_remote_code,
        allow_pickle=options.allow_pickle,
        **kwargs,
    )
    return model, None


def stream_pretrained(
    build: Callable[[object], torch.nn.Module], config, source: str, *, allow_pickle: bool = False
) -> tuple[torch.nn.Module, dict[str, SourceTensor]] | None:
    """``build(config)`` on the meta device, its config (a copy) given the dtype and name that
    ``from_pretrained(dtype="auto")`` would give it, and its state dict as tensors of the checkpoint at ``source``;
    None when loading it takes more than renaming keys."""
    config = copy.deepcopy(config)  # as from_pretrained does: the caller's config is left as it is
    path = Path(source)
    weight_files(path, allow_pickle=allow_pickle)  # a pickle-only dir is refused naming --allow-pickle, as before
    files = hf_weight_files(path)
    if files is None or getattr(config, "quantization_config", None) is not None:
        return None
    tensors: dict[str, SourceTensor] = {}
    for f in files[0]:
        tensors.update(safetensors_tensors(f))  # a later shard's key wins, as when loading
    hf_auto_dtype(config, *files)
    config.name_or_path = source  # as from_pretrained records it
    model = meta_module(lambda: build(config))
    keys = hf_checkpoint_keys(model, tensors)
    weights = None if keys is None else matched(model, {k: tensors[c] for k, c in keys.items()}, source)
    return None if weights is None else (model, weights)


def prefixed(prefix: str, weights: dict[str, SourceTensor] | None) -> dict[str, SourceTensor] | None:
    """``weights`` keyed as in the module that holds theirs under ``prefix`` (``model.``)."""
    return None if weights is None else {prefix + k: t for k, t in weights.items()}
