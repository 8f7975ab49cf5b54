"""The only module that writes model outputs to disk: atomic directories and safetensors shards.

Every output directory is built in a temporary sibling (``.NAME.tmp-PID-RAND``) and renamed into
place at the end, so a failure or a kill leaves either the previous output or nothing; stale
temporaries of dead processes are removed on the next run. A write that fails for a cause of the
environment (disk full, file-size limit, quota, permissions, read-only file system), whichever
writer raised it, becomes one ``VlmSwapError`` line naming the cause and the output. Weights are
only ever written as safetensors, in shards with a standard ``model.safetensors.index.json``,
streamed tensor by tensor (``ShardWriter``): memory stays bounded whatever the checkpoint size.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import struct
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from .errors import VlmSwapError
from .tensor_files import TORCH_TO_ST, FileRange

DEFAULT_SHARD_BYTES = 2 * 1024**3
# In-kernel copies (splice) run at full speed only from a source offset on a 64 KiB boundary to a
# destination offset equal to it modulo 64 KiB; anything else costs about 35% more CPU per byte
COPY_ALIGN = 64 * 1024
COPY_CHUNK = 256 * 1024**2  # bytes per copy_file_range / write call (the copy itself stays in the kernel)
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
PROVENANCE_NAME = "vlm_swap.json"
RUN_SUMMARY_NAME = "run.json"
#: files that mark a directory as written by vlm-swap (``--force`` replaces only such a directory)
OUTPUT_MARKERS = (PROVENANCE_NAME, RUN_SUMMARY_NAME)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(out: Path) -> None:
    """Finish what dead processes left: remove their ``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` siblings.

    A kill between moving the previous output aside (``.old``) and moving the new one in leaves no
    ``out``; then the previous output is moved back first, so a kill never loses it.
    """
    if not out.parent.is_dir():
        return
    stale = []
    for p in out.parent.glob(f".{out.name}.*-*-*"):
        kind, _, rest = p.name[len(out.name) + 2 :].partition("-")
        pid = rest.split("-", 1)[0]
        if kind in ("tmp", "old") and pid.isdigit() and not _pid_alive(int(pid)):
            stale.append((kind, p))
    previous = [p for kind, p in stale if kind == "old"]
    with contextlib.suppress(OSError):
        if previous and not os.path.lexists(out):
            os.rename(previous[0], out)
    for _, p in stale:
        shutil.rmtree(p, ignore_errors=True)


def _is_vlm_swap_output(path: Path) -> bool:
    """A directory that a previous vlm-swap command wrote: it holds a provenance file or a run summary."""
    return any((path / name).is_file() for name in OUTPUT_MARKERS)


def check_not_an_input(out: Path, inputs: Iterable[str | Path | None] = ()) -> None:
    """Refuse an output that is one of the (local) inputs, contains one, or lies inside one, and one
    that is or contains the current directory: replacing it would destroy what the command reads."""
    out = Path(out).expanduser().absolute().resolve()
    for given in inputs:
        if given is None or not os.path.lexists(Path(given).expanduser()):
            continue  # a hub id or a catalog id, not a local path
        inp = Path(given).expanduser().absolute().resolve()
        if out == inp or out in inp.parents:
            relation = "is" if out == inp else "contains"
            raise VlmSwapError(f"output {out} {relation} the input {given}; choose another --out")
        if inp in out.parents:
            raise VlmSwapError(f"output {out} lies inside the input {given}; choose another --out")
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        relation = "is" if out == cwd else "contains"
        raise VlmSwapError(f"output {out} {relation} the current directory; choose another --out")


def check_writable_parent(out: Path) -> None:
    """Refuse an output (file or directory) whose parent cannot be created or written, before any work."""
    out = Path(out).expanduser().absolute()
    ancestor = next(p for p in (out.parent, *out.parent.parents) if os.path.lexists(p))
    if not ancestor.is_dir():
        raise VlmSwapError(f"cannot write to {out.parent}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(ancestor).f_flag & os.ST_RDONLY)
        why = "a read-only file system" if read_only else "permission denied"
        raise VlmSwapError(f"cannot write to {out.parent}: {why} ({ancestor})")


def check_output_dir(out: Path, force: bool, inputs: Iterable[str | Path | None] = (), *, ours: bool = False) -> None:
    """Refuse an output that would destroy an input (``check_not_an_input``), a non-empty output
    directory unless ``force``, and, even with ``force``, a directory that vlm-swap did not write
    (no provenance file); refuse a file in its place or a parent that cannot be written (before any
    work is done). ``ours``: the caller wrote ``out`` itself (a stage's ``final/``), no marker needed.

    Leftovers of killed runs are dealt with first (``clean_stale_temporaries``), so the check sees
    the previous output even when a kill interrupted its replacement."""
    out = Path(out).expanduser().absolute()
    check_not_an_input(out, inputs)
    check_writable_parent(out)
    clean_stale_temporaries(out)
    if out.exists() and not out.is_dir():
        raise VlmSwapError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise VlmSwapError(f"output directory {out} is not empty; pass --force to replace it")
        if not ours and not _is_vlm_swap_output(out):
            raise VlmSwapError(
                f"refusing to replace {out}: it is not a vlm-swap output (no {PROVENANCE_NAME}); "
                "remove it yourself or choose another --out"
            )


#: errno -> the cause a user can act on, for writes that fail because of the environment
WRITE_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EFBIG: "file too large (file-size limit reached)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error",
}


def write_failure(exc: BaseException, out: Path) -> VlmSwapError | None:
    """A one-line error for a failed write (an OSError, or a safetensors error wrapping one), else None."""
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    if isinstance(exc, OSError) and exc.filename and not str(exc.filename).startswith(str(out.parent)):
        return None  # a file elsewhere (an input) failed: not a write to the output
    if isinstance(exc, SafetensorError) and (m := re.search(r"os error (\d+)", str(exc))):
        code = int(m.group(1))
    if code not in WRITE_ERRORS:
        return None
    return VlmSwapError(f"{WRITE_ERRORS[code]} while writing {out}; it is unchanged")


@contextlib.contextmanager
def atomic_dir(
    out: str | Path, *, force: bool = False, inputs: Iterable[str | Path | None] = (), ours: bool = False
) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out`` only if the block succeeds.

    ``out`` is checked first (``check_output_dir`` with ``force``, ``inputs`` and ``ours``).
    A write that fails for an environmental cause (see ``WRITE_ERRORS``) raises one ``VlmSwapError``
    line; the temporary is removed and a previous ``out`` stays as it was.
    """
    out = Path(out).expanduser().absolute()
    check_output_dir(out, force, inputs, ours=ours)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = out.parent / f".{out.name}.tmp-{tag}"
        tmp.mkdir()
    except OSError as exc:
        raise VlmSwapError(f"cannot write to {out.parent}: {exc.strerror or exc}") from exc
    try:
        yield tmp
        if out.exists():
            old = out.parent / f".{out.name}.old-{tag}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        failure = write_failure(exc, out)
        if failure is not None:
            raise failure from exc
        raise


#: What an entry writes, in order: tensors (their raw bytes) and byte ranges of other files.
Piece = torch.Tensor | FileRange


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
    a cast). A shard is planned from the registered dtypes and shapes, its header written, then its
    tensor bytes, so no shard is ever held in memory and byte ranges are copied inside the kernel
    (``copy_file_range``). Tensors are written at their planned offsets by up to ``workers`` threads
    at once (the copies release the GIL).

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


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write a file atomically: a temporary sibling renamed over ``path`` (a reader never sees half a file)."""
    _write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_figure(fig, path: Path) -> Path:
    """Save a matplotlib figure as PNG atomically (like ``write_text``) and close it."""
    import matplotlib.pyplot as plt

    try:
        _write_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return Path(path)


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # on a read-only file system even this fails: report the write
            tmp.unlink(missing_ok=True)
        failure = write_failure(exc, path)
        if failure is not None:
            raise failure from exc
        raise


def copy_file(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise VlmSwapError(f"missing file: {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VlmSwapError(f"{path} is not valid JSON: {exc}") from exc
