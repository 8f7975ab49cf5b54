"""LLM streaming: every tensor of the output's LLM and encoder, planned as streams before a byte is written.

The LLM is never materialised: its module is built on the meta device (``llm_skeleton``) for its
names and shapes, the source's weights are checked against it (``check_llm_shapes``: shapes;
``plan_llm``: no stray or missing weight), and each output tensor is a ``TensorStream`` that the
shard writer runs later. An unchanged tensor is a byte range of its source shard (bit-identical,
copied in the kernel); a cast one is read and cast a block of rows at a time; the embedding rows of
added tokens are appended, set to the mean row of the source (``_resized``). The output shards
follow the source's, so that the copies keep their offsets modulo 64 KiB; grown embeddings go at the
end of their shard for the same reason. The encoder's tensors (``encoder_shards``) stream the same
way, from its own checkpoint files or, for an encoder loaded whole, from memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedConfig

from ..backends.base import LoadedEncoder
from ..checkpoints.shards import TensorStream, copied
from ..checkpoints.tensors import FileRange, SourceTensor
from ..errors import VlmSwapError
from ..format.compat import no_weight_init
from .source import Source

ROW_BLOCK_BYTES = 16 * 1024**2  # rows read, cast and written at a time when a tensor changes


def llm_skeleton(text_cfg: PreTrainedConfig) -> torch.nn.Module:
    """The causal LM of ``text_cfg`` on the meta device (no memory, no initialisation): names and shapes."""
    with torch.device("meta"), no_weight_init():
        return AutoModelForCausalLM.from_config(text_cfg)


def check_llm_shapes(src: Source, files: dict[Path, dict[str, SourceTensor]], skeleton: torch.nn.Module) -> None:
    """Every LLM weight of the source has the shape its config implies (embedding rows may differ: resized)."""
    expected = {n: tuple(t.shape) for n, t in skeleton.state_dict().items()}
    resized = _embedding_names(skeleton)
    for key, shape in ((k, t.shape) for tensors in files.values() for k, t in tensors.items()):
        llm_key = None if src.layout.part_of(key) in ("encoder", "connector") else src.layout.llm_key(key)
        want = expected.get(llm_key)
        if want is not None and (shape[1:] != want[1:] if llm_key in resized else shape != want):
            raise VlmSwapError(
                f"weight {key!r} of {src.path} has shape {list(shape)} where its config implies {list(want)} "
                "(config/weights mismatch)"
            )


@dataclass(frozen=True)
class LLMTensors:
    """The output's LLM tensors (``language_model.*``), one group per source shard, and their dtype."""

    shards: list[list[TensorStream]]
    dtype: torch.dtype  # of the floating tensors: the one asked for, else the source's


def plan_llm(
    src: Source,
    files: dict[Path, dict[str, SourceTensor]],
    skeleton: torch.nn.Module,
    new_vocab: int,
    new_ids: list[int],
    dtype: torch.dtype | None,
) -> LLMTensors:
    """The LLM tensors of ``src`` as streams, in the shards of the source (``files``: its tensors by shard).

    Unchanged tensors are byte ranges, so they keep their offsets (mod 64 KiB) when the output shards
    follow the source's. Cast tensors are read, a block of rows at a time, when the writer writes them;
    grown embeddings come at the end of their shard, so the offsets of the others stay as they are.
    """
    names = {n for n, _ in skeleton.named_parameters()} | {n for n, _ in skeleton.named_buffers()}
    grow = _embedding_names(skeleton)
    seen, out_dtype, shards = set(), dtype, []
    for path, tensors in files.items():
        shard, grown = [], []
        for key, t in tensors.items():
            part = src.layout.part_of(key)
            if part in ("encoder", "connector"):
                continue
            llm_key = src.layout.llm_key(key)
            if llm_key is None or llm_key not in names:
                raise VlmSwapError(
                    f"{path.name}: weight {key!r} does not belong to the {src.layout.id} "
                    "layout (config/weights mismatch?)"
                )
            floating = t.dtype.is_floating_point
            if out_dtype is None and floating:
                out_dtype = t.dtype
            name, out = f"language_model.{llm_key}", dtype if dtype and floating else t.dtype
            if llm_key in grow and (new_ids or t.shape[0] != new_vocab):
                grown.append((name, t, out))
            else:
                shard.append(_stream(name, t, out))
            seen.add(llm_key)
        for name, t, out in grown:
            shape = (new_vocab, *t.shape[1:])
            shard.append(TensorStream(name, out, shape, partial(_resized, t, out, new_vocab, new_ids)))
        shards.append(shard)
    tied = getattr(skeleton.config, "tie_word_embeddings", False)
    required = {n for n, _ in skeleton.named_parameters()}  # tied params appear once
    missing = sorted(required - seen - ({_param_name(skeleton, skeleton.get_output_embeddings())} if tied else set()))
    if missing:
        raise VlmSwapError(
            f"the source lacks {len(missing)} LLM weights (first: {missing[0]}): config/weights mismatch"
        )
    return LLMTensors(shards, out_dtype or torch.float32)


def encoder_shards(loaded: LoadedEncoder, dtype: torch.dtype) -> list[list[TensorStream]]:
    """The encoder's tensors as ``encoder.*``, floating ones cast to ``dtype``: byte ranges of its checkpoint files
    (a new group at each file, so that the copies keep their offsets mod 64 KiB) or, for an encoder loaded whole,
    its tensors in memory (one group)."""
    shards: list[list[TensorStream]] = [[]]
    path = None
    for key, t in loaded.tensors().items():
        if t.raw is not None and t.raw.path != path:
            if shards[-1]:
                shards.append([])
            path = t.raw.path
        shards[-1].append(_stream(f"encoder.{key}", t, dtype if t.dtype.is_floating_point else t.dtype))
    return shards


def _embedding_names(skeleton: torch.nn.Module) -> set[str]:
    """The weights of the input and output embeddings: the tensors that grow with the vocabulary."""
    embeddings = (skeleton.get_input_embeddings(), skeleton.get_output_embeddings())
    return {_param_name(skeleton, m) for m in embeddings if m is not None}


def _param_name(model: torch.nn.Module, module: torch.nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return f"{name}.weight"
    raise VlmSwapError("cannot locate the embedding matrix of the LLM")


def _stream(name: str, t: SourceTensor, dtype: torch.dtype) -> TensorStream:
    """``t`` cast to ``dtype``: a raw byte copy when it is unchanged and lies in a file."""
    if dtype == t.dtype and t.raw is not None:
        return copied(name, t)
    return TensorStream(name, dtype, t.shape, lambda: _blocks(t, dtype))


def _blocks(t: SourceTensor, dtype: torch.dtype, start: int = 0, stop: int | None = None):
    """Rows ``[start, stop)`` of ``t`` cast to ``dtype``, ``ROW_BLOCK_BYTES`` at a time (a 0-d tensor whole)."""
    if not t.shape:
        yield t.read_rows(0, 1).to(dtype)
        return
    step = max(1, ROW_BLOCK_BYTES // max(1, t.row_bytes))
    stop = t.shape[0] if stop is None else stop
    for a in range(start, stop, step):
        yield t.read_rows(a, min(a + step, stop)).to(dtype)


def _mean_row(t: SourceTensor) -> torch.Tensor:
    """Mean over dim 0 of ``t`` in float64 (float32 within a block of rows, pairwise)."""
    total = torch.zeros(t.shape[1:], dtype=torch.float64)
    for block in _blocks(t, t.dtype):
        total += block.sum(0, dtype=torch.float32)
    return total / max(t.shape[0], 1)


def _resized(t: SourceTensor, dtype: torch.dtype, rows: int, new_ids: list[int]):
    """``[V, D] -> [rows, D]``: old rows kept bit-identical (a byte copy when not cast), rows of new
    tokens and rows past ``V`` set to the mean row of the source (rounded to its dtype). The mean is
    computed when the writer gets to this tensor, on its worker."""
    keep = min(rows, t.shape[0])
    mean = _mean_row(t).to(t.dtype).to(dtype)
    start = 0
    for i in [*sorted({i for i in new_ids if i < keep}), keep]:
        if start < i and t.raw is not None and dtype == t.dtype:
            yield FileRange(t.raw.path, t.raw.offset + start * t.row_bytes, (i - start) * t.row_bytes)
        elif start < i:
            yield from _blocks(t, dtype, start, i)
        if i < keep:
            yield mean[None]
        start = i + 1
    step = max(1, ROW_BLOCK_BYTES // max(1, mean.numel() * mean.element_size()))
    for a in range(keep, rows, step):
        yield mean.expand(min(step, rows - a), *mean.shape)
