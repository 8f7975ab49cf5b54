"""Where a checkpoint is and which of its files hold weights: sources resolved, shard lists checked.

A SOURCE is a catalog id, a local directory or a hub id (optionally pinned to a ``revision``).
Local paths that do not exist fail here with the path named; hub ids go to the hub (and fail with
the cause when offline), fetching only what loading may read (pickle files only when the caller
allows them). A checkpoint directory's weight files are its safetensors shards (through the shard
index when there is one, whose names must stay inside the directory); pickle files are listed only
with ``allow_pickle``, and a directory holding only pickle weights is refused naming
``--allow-pickle``. FIFOs, devices and dangling links are refused before anything reads them.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import VlmSwapError, first_line
from .atomic import read_json
from .tensors import read_safetensors_header

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
PICKLE_INDEX_NAME = "pytorch_model.bin.index.json"
ALLOW_PICKLE_HINT = "pass --allow-pickle to read them (tensors only, torch.load weights_only=True)"
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken", "*.py"]


def looks_local(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or Path(source).exists() or source.count("/") > 1


def resolve_source(
    source: str,
    *,
    config_only: bool = False,
    marker: str = "config.json",
    revision: str | None = None,
    allow_pickle: bool = False,
) -> str:
    """A catalog id or hub id -> a local snapshot dir; a local path -> the checked absolute path.

    ``marker`` is the file that makes a directory a checkpoint of the expected kind (open_clip
    checkpoints have ``open_clip_config.json`` instead of a transformers ``config.json``).
    ``revision`` (a branch, tag or commit) pins a hub id; it is refused for a local path.
    """
    from ..catalog import CATALOG

    if source in CATALOG:
        source = CATALOG.get(source).hub_id
    if looks_local(source):
        if revision is not None:
            raise VlmSwapError(f"--revision pins a hub id; {source} is a local path")
        path = Path(source).expanduser()
        if not path.exists():
            raise VlmSwapError(f"path not found: {source}")
        if not path.is_dir():
            raise VlmSwapError(f"not a model directory: {source}")
        refuse_special_files(path.iterdir())  # a FIFO or a device would block the first read forever
        if not (path / marker).is_file():
            raise VlmSwapError(f"no {marker} in {source}: not a checkpoint of the expected kind")
        return str(path.resolve())
    from huggingface_hub import snapshot_download

    pickles = [f"*{suffix}" for suffix in PICKLE_SUFFIXES] if allow_pickle else []  # never fetched just to refuse
    patterns = [marker] if config_only else HUB_PATTERNS + pickles
    try:
        return snapshot_download(source, revision=revision, allow_patterns=patterns)
    except Exception as exc:  # offline, gated, unknown repo: say which and why, in one line
        first = first_line(exc).rstrip(".")
        if "/" not in source:  # most often a misspelt catalog id
            close = CATALOG.close_ids(source)
            hint = f"did you mean {', '.join(close)}?" if close else "vlm-swap list catalog lists them"
            raise VlmSwapError(
                f"unknown model {source!r}: not a catalog id ({hint}), not a local path, and the hub could not "
                f"give it ({first})"
            ) from exc
        known = [i for i, e in CATALOG.items() if e.hub_id == source]
        also = f"; its catalog id {known[0]} gives its facts offline (inspect, pairs)" if known else ""
        raise VlmSwapError(f"cannot fetch {source!r} from the hub (not a local path either): {first}{also}") from exc


def refuse_special_files(paths) -> None:
    """Refuse a FIFO, socket, device or dangling link where a checkpoint has files: reading one blocks
    forever or fails far from the cause."""
    for p in paths:
        if not (p.is_file() or p.is_dir()):
            what = "a dangling link" if p.is_symlink() and not p.exists() else "not a regular file (a FIFO or device?)"
            raise VlmSwapError(f"{p} is {what}; a checkpoint holds regular files")


def _indexed(path: Path, index: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The shards a weight index names: files of ``suffixes`` inside ``path``, nothing else."""
    data = read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) and v for v in weight_map.values()):
        raise VlmSwapError(f"{index} is not a shard index (its weight_map must map tensor names to file names)")
    names = sorted(set(weight_map.values()))
    for name in names:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise VlmSwapError(f"{index} names {name!r}, a file outside {path}; shards must lie in the checkpoint")
        if not name.endswith(suffixes):
            raise VlmSwapError(f"{index} names {name!r}, which is not a {' / '.join(suffixes)} weight file")
    files = [path / n for n in names]
    missing = [f.name for f in files if not os.path.lexists(f)]
    if missing:
        raise VlmSwapError(f"{path}: shards listed in {index.name} are missing: {', '.join(missing)}")
    refuse_special_files(files)
    return files


def weight_files(path: Path, *, required: bool = True, allow_pickle: bool = False) -> list[Path]:
    """The weight shards of a checkpoint dir (via the index when there is one): safetensors, or pickle
    files when there are no safetensors and ``allow_pickle`` is given."""
    if (path / INDEX_NAME).is_file():
        return _indexed(path, path / INDEX_NAME, (".safetensors",))
    files = sorted(path.glob("*.safetensors"))
    refuse_special_files(files)
    if files or not required:
        return files
    pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    if pickles and allow_pickle:
        index = path / PICKLE_INDEX_NAME
        return _indexed(path, index, PICKLE_SUFFIXES) if index.is_file() else pickles
    if pickles:
        raise VlmSwapError(
            f"{path} holds only pickle weights ({', '.join(p.name for p in pickles)}); vlm-swap reads safetensors; "
            f"{ALLOW_PICKLE_HINT}, or convert them with save_pretrained(safe_serialization=True)"
        )
    hint = "; a hub checkpoint with only pickle weights needs --allow-pickle" if not allow_pickle else ""
    raise VlmSwapError(f"no weights (*.safetensors) in {path}{hint}")


def checked_weight_files(path: Path, *, allow_pickle: bool = False) -> list[Path]:
    """``weight_files`` with each safetensors header read and checked against its file's size, so that a
    truncated or corrupted shard is one line before any work, not an error of the library that reads it."""
    files = weight_files(path, allow_pickle=allow_pickle)
    for f in files:
        if f.suffix == ".safetensors":
            read_safetensors_header(f)
    return files
