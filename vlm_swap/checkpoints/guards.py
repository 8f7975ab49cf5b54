"""The output guards: what an output directory may be before anything is written to it.

An output must not be one of the command's local inputs, contain one or lie inside one, nor be or
contain the current directory (``check_not_an_input``); its parent must be writable
(``check_writable_parent``); a non-empty directory is replaced only with ``--force``, and even then
only when vlm-swap wrote it (it holds a provenance file or a run summary, ``OUTPUT_MARKERS``).
Leftovers of killed writers (``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` siblings of dead processes)
are cleaned up first, the previous output moved back when a kill interrupted its replacement.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from ..errors import VlmSwapError

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
