"""Safetensors files read lazily: validated headers, byte ranges and row blocks of tensors.

Owns the safetensors format on the reading side (``read_safetensors_header``: every entry checked
against the file size) and the two ways a tensor is streamed to an output: as a byte range of its
file (``FileRange``, copied without entering Python) or, when it changes (a cast, grown embedding
rows), one block of rows at a time (``SourceTensor.read_rows``, memory-mapped). A ``SourceTensor``
can equally wrap a tensor already in memory, so weights from another container format stream
through the same path. ``ST_DTYPES`` / ``TORCH_TO_ST`` are the dtype names both sides use.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import VlmSwapError

# safetensors dtype names and their torch dtypes (sub-byte formats are not supported)
ST_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I16": torch.int16,
    "U16": torch.uint16,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "F32": torch.float32,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F64": torch.float64,
    "C64": torch.complex64,
}
TORCH_TO_ST = {v: k for k, v in ST_DTYPES.items()}
MAX_HEADER_BYTES = 100 * 1024**2  # the safetensors library's own limit


@dataclass(frozen=True)
class FileRange:
    """``nbytes`` bytes at absolute ``offset`` of the file ``path``: copied without entering Python."""

    path: Path
    offset: int
    nbytes: int


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors file as its header describes it (``start`` is absolute)."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    nbytes: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return ST_DTYPES[self.dtype]

    def byte_range(self, path: Path) -> FileRange:
        return FileRange(path, self.start, self.nbytes)


def read_safetensors_header(path: str | Path) -> dict[str, TensorInfo]:
    """The tensors of a safetensors file in file order, validated against the file size.

    Layout: an 8-byte little-endian header length N, N bytes of JSON (``__metadata__`` plus one
    ``{dtype, shape, data_offsets}`` per tensor, offsets relative to the end of the header), then
    the tensor bytes, contiguous. A truncated or corrupt file raises a one-line VlmSwapError.
    """
    path = Path(path)

    def bad(why: str) -> VlmSwapError:
        return VlmSwapError(f"corrupted or truncated safetensors file {path}: {why}")

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise bad(f"{size} bytes, shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise bad(f"header length {n} does not fit in a file of {size} bytes")
            raw = f.read(n)
    except OSError as exc:
        raise VlmSwapError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad(f"header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    base, buffer = 8 + n, size - 8 - n
    entries = []
    for name, e in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = e["dtype"], tuple(e["shape"]), e["data_offsets"]
            valid = all(isinstance(d, int) and d >= 0 for d in (*shape, begin, end))
        except (TypeError, KeyError, ValueError):
            valid = False
        if not valid:
            raise bad(f"malformed entry for tensor {name!r}")
        if dtype not in ST_DTYPES:
            raise bad(f"tensor {name!r} has unsupported dtype {dtype!r}")
        expected = math.prod(shape) * ST_DTYPES[dtype].itemsize
        if end - begin != expected:
            raise bad(f"tensor {name!r} spans {end - begin} bytes, its dtype and shape need {expected}")
        entries.append((begin, end, name, TensorInfo(dtype, shape, base + begin, expected)))
    entries.sort(key=lambda x: (x[0], x[1]))
    pos = 0
    for begin, end, name, _ in entries:
        if begin != pos:
            raise bad(f"tensor {name!r} starts at byte {begin}, expected {pos} (overlap or gap)")
        pos = end
    if pos != buffer:
        what = "truncated" if pos > buffer else "trailing bytes"
        raise bad(f"{what}: the header describes {pos} data bytes, the file holds {buffer}")
    return {name: info for _, _, name, info in entries}


@dataclass(frozen=True)
class SourceTensor:
    """A tensor to stream: dtype, shape, its rows on demand and, when verbatim in a file, its bytes."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    read_rows: Callable[[int, int], torch.Tensor]  # rows [a, b) of dim 0 (the whole tensor when 0-d)
    raw: FileRange | None = None

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    @classmethod
    def in_memory(cls, tensor: torch.Tensor) -> SourceTensor:
        return cls(tensor.dtype, tuple(tensor.shape), lambda a, b: tensor[a:b] if tensor.dim() else tensor)


def safetensors_tensors(path: str | Path) -> dict[str, SourceTensor]:
    """Every tensor of a safetensors file (header validated), in file order, read lazily."""
    path = Path(path)
    return {name: _file_tensor(path, info) for name, info in read_safetensors_header(path).items()}


def _map(path: Path, offset: int, n: int) -> mmap.mmap:
    """Bytes ``[offset, offset + n)`` of ``path`` mapped from the page cache (no copy; a private mapping, so
    the tensor viewing it is writable without touching the file), from the allocation boundary below
    ``offset``. The mapping lives as long as the tensor that views it."""
    base = offset - offset % mmap.ALLOCATIONGRANULARITY
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size < offset + n:  # the file changed since its header was checked
            raise VlmSwapError(f"corrupted or truncated safetensors file {path}: ended while reading")
        return mmap.mmap(f.fileno(), offset + n - base, access=mmap.ACCESS_COPY, offset=base)


def _file_tensor(path: Path, info: TensorInfo) -> SourceTensor:
    dtype, shape = info.torch_dtype, info.shape
    row = math.prod(shape[1:]) * dtype.itemsize

    def read_rows(a: int, b: int) -> torch.Tensor:
        rows_shape = (b - a, *shape[1:]) if shape else ()
        offset, n = (info.start + a * row, (b - a) * row) if shape else (info.start, info.nbytes)
        if not n:
            return torch.empty(rows_shape, dtype=dtype)
        return torch.frombuffer(_map(path, offset, n), dtype=dtype, offset=offset % mmap.ALLOCATIONGRANULARITY).reshape(
            rows_shape
        )

    return SourceTensor(dtype, shape, read_rows, info.byte_range(path))
