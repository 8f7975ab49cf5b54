"""The only module that writes model outputs to disk: atomic directories and safetensors shards.

Every output directory is built in a temporary sibling (``.NAME.tmp-PID-RAND``) and renamed into
place at the end, so a failure or a kill leaves either the previous output or nothing; stale
temporaries of dead processes are removed on the next run. A write that fails for a cause of the
environment (disk full, file-size limit, quota, permissions, read-only file system), whichever
writer raised it, becomes one ``VlmSwapError`` line naming the cause and the output. Weights are
only ever written as safetensors, in shards with a standard ``model.safetensors.index.json``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from .errors import VlmSwapError

DEFAULT_SHARD_BYTES = 2 * 1024**3
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
PROVENANCE_NAME = "vlm_swap.json"


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


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse a non-empty output directory unless ``force``; refuse a file in its place or a parent
    that cannot be written (before any work is done).

    Leftovers of killed runs are dealt with first (``clean_stale_temporaries``), so the check sees
    the previous output even when a kill interrupted its replacement."""
    out = Path(out).expanduser().absolute()
    ancestor = next(p for p in (out.parent, *out.parent.parents) if os.path.lexists(p))
    if not ancestor.is_dir():
        raise VlmSwapError(f"cannot write to {out.parent}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise VlmSwapError(f"cannot write to {out.parent}: permission denied on {ancestor}")
    clean_stale_temporaries(out)
    if out.exists() and not out.is_dir():
        raise VlmSwapError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise VlmSwapError(f"output directory {out} is not empty; pass --force to replace it")


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
def atomic_dir(out: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out`` only if the block succeeds.

    A write that fails for an environmental cause (see ``WRITE_ERRORS``) raises one ``VlmSwapError``
    line; the temporary is removed and a previous ``out`` stays as it was.
    """
    out = Path(out).expanduser().absolute()
    check_output_dir(out, force)
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


class ShardWriter:
    """Stream tensors into safetensors shards of at most ``max_bytes`` each (one shard in memory)."""

    def __init__(self, directory: Path, max_bytes: int = DEFAULT_SHARD_BYTES):
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._files: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_bytes:
            self._flush()
        self._pending[name] = tensor.contiguous()
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        path = self.directory / f".shard-{len(self._files):05d}.safetensors"
        save_file(self._pending, str(path), metadata={"format": "pt"})
        self._files.append((path, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list[Path]:
        if self._pending or not self._files:
            self._flush()
        n = len(self._files)
        if n == 1:
            final = [self.directory / WEIGHTS_NAME]
            os.rename(self._files[0][0], final[0])
            return final
        weight_map, final = {}, []
        for i, (path, names) in enumerate(self._files):
            name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.rename(path, self.directory / name)
            final.append(self.directory / name)
            weight_map.update(dict.fromkeys(names, name))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        write_json(self.directory / INDEX_NAME, index)
        return final


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write a file atomically: a temporary sibling renamed over ``path`` (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException as exc:
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
