"""Atomic outputs: a directory or a file appears whole under its final name, or not at all.

Every output directory is built in a temporary sibling (``.NAME.tmp-PID-RAND``, ``atomic_dir``)
and renamed into place at the end, so a failure or a kill leaves either the previous output or
nothing (the guards of ``guards.check_output_dir`` run first). Small files (JSON, text, figures)
are written to a temporary sibling and renamed over their path. A write that fails for a cause of
the environment (disk full, file-size limit, quota, permissions, read-only file system), whichever
writer raised it, becomes one ``VlmSwapError`` line naming the cause and the output
(``write_failure``). ``read_json`` is the reading half of ``write_json``, with one-line errors.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import VlmSwapError
from ..format.compat import safetensors_errno
from .guards import check_output_dir

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
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else safetensors_errno(exc)
    if isinstance(exc, OSError) and exc.filename and not str(exc.filename).startswith(str(out.parent)):
        return None  # a file elsewhere (an input) failed: not a write to the output
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
