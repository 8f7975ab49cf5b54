"""Loading pretrained parts safely: sources resolved, safetensors only, one-line errors.

A SOURCE is a catalog id, a local directory or a hub id. Local paths that do not exist fail
here with the path named; hub ids go to transformers (and fail with the cause when offline).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError

from ..errors import VlmSwapError
from ..io import INDEX_NAME, read_json


def looks_local(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or Path(source).exists() or source.count("/") > 1


HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken", "*.py"]


def resolve_source(source: str, *, config_only: bool = False, marker: str = "config.json") -> str:
    """A catalog id or hub id -> a local snapshot dir; a local path -> the checked absolute path.

    ``marker`` is the file that makes a directory a checkpoint of the expected kind (open_clip
    checkpoints have ``open_clip_config.json`` instead of a transformers ``config.json``).
    """
    from ..catalog import CATALOG

    if source in CATALOG:
        source = CATALOG.get(source).hub_id
    if looks_local(source):
        path = Path(source).expanduser()
        if not path.exists():
            raise VlmSwapError(f"path not found: {source}")
        if not path.is_dir():
            raise VlmSwapError(f"not a model directory: {source}")
        if not (path / marker).is_file():
            raise VlmSwapError(f"no {marker} in {source}: not a checkpoint of the expected kind")
        return str(path.resolve())
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(source, allow_patterns=[marker] if config_only else HUB_PATTERNS)
    except Exception as exc:  # offline, gated, unknown repo: say which and why, in one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise VlmSwapError(f"cannot fetch {source!r} from the hub (not a local path either): {first}") from exc


def load_pretrained(model_cls, source: str, *, dtype: torch.dtype | None, trust_remote_code: bool, **kwargs):
    """``model_cls.from_pretrained`` with safetensors enforced and errors turned into one line."""
    try:
        return model_cls.from_pretrained(
            source,
            dtype=dtype if dtype is not None else "auto",
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            **kwargs,
        )
    except VlmSwapError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VlmSwapError(f"could not load {model_cls.__name__} from {source}: {first}") from exc


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def weight_files(path: Path, *, required: bool = True) -> list[Path]:
    """The safetensors shards of a checkpoint dir (via the index when there is one)."""
    index = path / INDEX_NAME
    if index.is_file():
        names = sorted(set(read_json(index).get("weight_map", {}).values()))
        files = [path / n for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise VlmSwapError(f"{path}: shards listed in {INDEX_NAME} are missing: {', '.join(missing)}")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files and required:
        pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise VlmSwapError(
                f"{path} holds only pickle weights ({', '.join(sorted(pickles))}); vlm-swap reads safetensors only "
                "(convert them with transformers' save_pretrained(safe_serialization=True))"
            )
        raise VlmSwapError(f"no weights (*.safetensors) in {path}")
    return files
