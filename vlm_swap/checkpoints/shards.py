"""Safetensors shards written by streaming: tensors in, bounded memory, standard shard names and index.

Weights are only ever written as safetensors, in shards with a standard
``model.safetensors.index.json``, streamed tensor by tensor (``ShardWriter``): a shard's header is
planned from the registered dtypes and shapes, then its tensors' bytes are written at their offsets,
byte ranges of source files copied inside the kernel. Memory stays bounded whatever the checkpoint
size. The shards are written into a directory that ``atomic.atomic_dir`` makes appear whole.
"""

from __future__ import annotations

import errno
import json
import math
import os
import struct
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import VlmSwapError
from .atomic import write_json
from .resolve import INDEX_NAME, WEIGHTS_NAME
from .tensors import TORCH_TO_ST, FileRange, SourceTensor

DEFAULT_SHARD_BYTES = 2 * 1024**3
# In-kernel copies (splice) run at full speed only from a source offset on a 64 KiB boundary to a
# destination offset equal to it modulo 64 KiB; anything else costs about 35% more CPU per byte
COPY_ALIGN = 64 * 1024
COPY_CHUNK = 256 * 1024**2  # bytes per copy_file_range / write call (the copy itself stays in the kernel)


#: What an entry writes, in order: tensors (their raw bytes) and byte ranges of other files.
Piece = torch.Tensor | FileRange


@dataclass(frozen=True)
class TensorStream:
    """A tensor to write, described before its bytes exist: ``pieces()`` produces exactly its bytes.

    ``source_offset``: where the bytes start in the file they are copied from, when they are a copy.
    """

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    pieces: Callable[[], Iterable[Piece]]
    source_offset: int | None = None


def copied(name: str, t: SourceTensor) -> TensorStream:
    """The bytes of ``t`` as they lie in its file (``t.raw``), written unchanged as ``name``."""
    return TensorStream(name, t.dtype, t.shape, lambda: (t.raw,), source_offset=t.raw.offset)


@dataclass
class _Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    pieces: Callable[[], Iterable[Piece]]
    source_offset: int | None  # where its bytes start in the file they are copied from


class ShardWriter:
    """Write tensors into safetensors shards of at most ``max_bytes`` each, streaming their bytes.

    ``add`` registers an in-memory tensor, ``add_stream`` a tensor produced piece by piece: byte
    ranges of other files (an unchanged tensor of a source shard) and tensors (e.g. row blocks of
    a cast); ``add_shards`` registers groups of ``TensorStream``, each starting a shard. A shard is
    planned from the registered dtypes and shapes, its header written, then its tensor bytes, so no
    shard is ever held in memory and byte ranges are copied inside the kernel (``copy_file_range``).
    Tensors are written at their planned offsets by up to ``workers`` threads at once (the copies
    release the GIL).

    ``flush`` starts writing, in the background, the shards that ``end_shard`` has closed: their
    tensors are final, so the caller can go on working (loading an encoder, say) while they are
    copied. ``close`` writes the rest, waits for every tensor, then gives the shards their final
    names (``model.safetensors``, or ``model-0000K-of-0000N.safetensors`` and the index once N is
    known). Used as a context manager, an exception cancels the tensors not yet started and waits
    for those being written, so no thread writes into a directory that is being removed. Files are
    not fsynced (like ``cp``); ``atomic_dir`` makes the directory appear whole or not at all.
    """

    def __init__(self, directory: Path, max_bytes: int = DEFAULT_SHARD_BYTES, workers: int | None = None):
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.workers = workers or min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
        self._entries: list[_Entry] = []  # registered, not yet in a started shard
        self._names: set[str] = set()
        self._breaks: set[int] = set()  # indices into _entries where a new shard begins
        self._shards: list[tuple[Path, list[_Entry]]] = []  # started, under their working names
        self._fds: list[int] = []
        self._jobs: list[Future] = []
        self._pool: ThreadPoolExecutor | None = None
        self.total_bytes = 0

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.abort()  # after close() there is nothing left to stop

    def add_stream(
        self,
        name: str,
        dtype: torch.dtype,
        shape: tuple[int, ...],
        pieces: Callable[[], Iterable[Piece]],
        source_offset: int | None = None,
    ) -> None:
        """Register ``name``; at write time ``pieces()`` must produce exactly its bytes.

        ``source_offset``: where the bytes start in the file they are copied from, when they are a
        copy; the shard's header is then padded so that they keep their offset modulo ``COPY_ALIGN``.
        """
        if name in self._names:
            raise ValueError(f"tensor {name!r} added twice")
        if dtype not in TORCH_TO_ST:
            raise VlmSwapError(f"cannot store {name}: safetensors has no name for {dtype}")
        shape = tuple(int(d) for d in shape)
        nbytes = math.prod(shape) * dtype.itemsize
        self._names.add(name)
        self._entries.append(_Entry(name, TORCH_TO_ST[dtype], shape, nbytes, pieces, source_offset))
        self.total_bytes += nbytes

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self.add_stream(name, tensor.dtype, tuple(tensor.shape), lambda: (tensor,))

    def add_shards(self, shards: Iterable[Iterable[TensorStream]]) -> None:
        """Register each group of ``shards`` from the start of a new shard (it may be split at ``max_bytes``)."""
        for streams in shards:
            self.end_shard()
            for t in streams:
                self.add_stream(t.name, t.dtype, t.shape, t.pieces, t.source_offset)

    def end_shard(self) -> None:
        """Start a new shard with the next tensor (e.g. to follow the shards of a source)."""
        self._breaks.add(len(self._entries))

    def flush(self) -> None:
        """Start writing, in the background, every shard closed by ``end_shard``; return at once."""
        cut = max(self._breaks, default=0)
        if not cut:
            return
        self._start(self._entries[:cut])
        self._entries = self._entries[cut:]
        self._breaks = {b - cut for b in self._breaks if b > cut}

    def close(self, advance: Callable[[int], object] | None = None) -> list[Path]:
        """Write what is left, wait for every tensor (``advance(nbytes)`` after each) and name the shards."""
        try:
            self._start(self._entries)
            self._entries = []
            for job in self._jobs:
                nbytes = job.result()
                if advance is not None:
                    advance(nbytes)
        finally:
            self.abort()  # the pool and the files are closed whether or not a tensor failed
        n = len(self._shards)
        names = [WEIGHTS_NAME] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        paths = [self.directory / name for name in names]
        for (working, _), path in zip(self._shards, paths, strict=True):
            os.rename(working, path)
        if n > 1:
            weight_map = {e.name: p.name for p, (_, entries) in zip(paths, self._shards, strict=True) for e in entries}
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            write_json(self.directory / INDEX_NAME, index)
        return paths

    def abort(self) -> None:
        """Cancel the tensors not started, wait for those being written, close the files."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def _plan(self, entries: list[_Entry]) -> list[list[_Entry]]:
        shards: list[list[_Entry]] = [[]]
        size = 0
        for i, e in enumerate(entries):
            if shards[-1] and (size + e.nbytes > self.max_bytes or i in self._breaks):
                shards.append([])
                size = 0
            shards[-1].append(e)
            size += e.nbytes
        return [s for s in shards if s] or ([] if self._shards else [[]])  # an empty writer writes one shard

    def _start(self, entries: list[_Entry]) -> None:
        """Write the headers of the shards of ``entries`` and queue their tensors on the workers."""
        shards = self._plan(entries)
        jobs = []
        for k, shard in enumerate(shards):
            path = self.directory / f"part-{len(self._shards) + 1:05d}.safetensors"  # renamed by close()
            self._fds.append(_open_for_writing(path))
            self._shards.append((path, shard))
            offset = _write_header(self._fds[-1], path, shard)
            for i, e in enumerate(shard):
                jobs.append(((e.source_offset is not None, i, k), (path, self._fds[-1], offset, e)))
                offset += e.nbytes
        # tensors that are computed (cast, grown, in memory) first, so that their work runs beside the
        # copies rather than after them; then the copies, shards in turn so that the workers write
        # different files
        if jobs and self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="shard-writer")
        self._jobs += [self._pool.submit(_write_entry, job) for _, job in sorted(jobs, key=lambda j: j[0])]


def _failed_write(exc: OSError, path: Path) -> OSError:
    """The error of a write to ``path``, naming it (``atomic_dir`` turns environment causes into one line)."""
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


def _open_for_writing(path: Path) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        raise _failed_write(exc, path) from exc


def _write_header(fd: int, path: Path, entries: list[_Entry]) -> int:
    """Write the safetensors header of ``entries`` (in this order); return where their data starts."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for e in entries:
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * _header_padding(len(raw), entries)
    raw = struct.pack("<Q", len(raw)) + raw
    try:
        _pwrite_all(fd, raw, 0)
    except OSError as exc:
        raise _failed_write(exc, path) from exc
    return len(raw)


def _header_padding(size: int, entries: list[_Entry]) -> int:
    """Spaces after a JSON header of ``size`` bytes: the data starts 8-byte aligned (as safetensors
    writes it) and, when the first copied tensor allows it, at the same offset modulo ``COPY_ALIGN`` as
    in its source, so that the in-kernel copies of it and of the tensors after it run at full speed."""
    rel = 0
    for e in entries:
        if e.source_offset is not None:
            pad = (e.source_offset - rel - 8 - size) % COPY_ALIGN
            if (size + pad) % 8 == 0:
                return pad
            break
        rel += e.nbytes
    return -size % 8


def _write_entry(job: tuple[Path, int, int, _Entry]) -> int:
    """Write one tensor's pieces at its planned offset (positional writes: tensors go in parallel)."""
    path, fd, offset, e = job
    start = offset
    try:
        for piece in e.pieces():
            offset += _write_piece(fd, piece, offset)
    except OSError as exc:
        raise _failed_write(exc, path) from exc
    if offset - start != e.nbytes:
        raise RuntimeError(f"tensor {e.name}: wrote {offset - start} bytes, its header says {e.nbytes}")
    return e.nbytes


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        done = os.pwrite(fd, view[:COPY_CHUNK], offset)
        view, offset = view[done:], offset + done


def _write_piece(fd: int, piece: Piece, offset: int) -> int:
    if isinstance(piece, FileRange):
        _copy_range(piece, fd, offset)
        return piece.nbytes
    flat = piece.detach().cpu().contiguous().reshape(-1)
    if flat.numel():
        _pwrite_all(fd, flat.view(torch.uint8).numpy(), offset)
    return flat.numel() * flat.element_size()


def _copy_range(src: FileRange, fd: int, dst: int) -> None:
    """Copy ``src``'s bytes to offset ``dst`` of ``fd``: in-kernel ``copy_file_range``, else pread/pwrite.

    The bytes before the first ``COPY_ALIGN`` boundary of the source are copied on their own, so the
    rest starts on a boundary (full speed when ``dst`` agrees with the source modulo ``COPY_ALIGN``)."""
    copy = _kernel_copy if hasattr(os, "copy_file_range") else _pread_write
    with open(src.path, "rb") as f:
        sfd, offset, left = f.fileno(), src.offset, src.nbytes
        while left:
            try:
                done = copy(sfd, fd, min(left, -offset % COPY_ALIGN or COPY_CHUNK), offset, dst)
            except OSError as exc:  # e.g. a file system that refuses in-kernel copies: copy through a buffer
                if copy is _pread_write or exc.errno not in _NO_KERNEL_COPY:
                    raise
                copy = _pread_write
                continue
            if done == 0:
                raise VlmSwapError(f"corrupted or truncated safetensors file {src.path}: ended while copying")
            offset, dst, left = offset + done, dst + done, left - done


_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF}


def _kernel_copy(sfd: int, fd: int, count: int, offset: int, dst: int) -> int:
    return os.copy_file_range(sfd, fd, count, offset, dst)


def _pread_write(sfd: int, fd: int, count: int, offset: int, dst: int) -> int:
    data = os.pread(sfd, min(count, 16 * 1024**2), offset)
    _pwrite_all(fd, data, dst)
    return len(data)
