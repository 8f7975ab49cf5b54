"""Loading pretrained parts safely: sources resolved, weights read without running code, one-line errors.

A SOURCE is a catalog id, a local directory or a hub id (optionally pinned to a ``revision``).
Local paths that do not exist fail here with the path named; hub ids go to the hub (and fail with
the cause when offline). Weights are safetensors; pickle weights (``.bin``, ``.pt``, ...) are
refused unless the caller opts in with ``allow_pickle``, and even then they are read with
``torch.load(weights_only=True)`` (memory-mapped where the file format allows), which refuses
anything but tensors and plain containers. A weight file is read through a reader with
``keys()`` / ``get_tensor(key)``, whatever its format (``open_weights``).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, PreTrainedConfig

from ..errors import VlmSwapError
from ..io import INDEX_NAME, read_json
from ..tensor_files import read_safetensors_header

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
PICKLE_INDEX_NAME = "pytorch_model.bin.index.json"
ALLOW_PICKLE_HINT = "pass --allow-pickle to read them (tensors only, torch.load weights_only=True)"


def looks_local(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or Path(source).exists() or source.count("/") > 1


HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken", "*.py"]


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
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
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


def load_config(path: str | Path, trust_remote_code: bool = False) -> PreTrainedConfig:
    """``AutoConfig.from_pretrained`` with one-line errors; a config that ships code needs ``trust_remote_code``."""
    raw = Path(path) / "config.json"
    if not trust_remote_code and raw.is_file() and "auto_map" in read_json(raw):
        raise VlmSwapError(f"{path} ships its own model code (auto_map); pass --trust-remote-code to run it")
    try:
        return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise VlmSwapError(f"cannot read the config of {path}: {first}") from exc


def load_auto(auto_cls, path: str | Path, what: str, *, trust_remote_code: bool, **kwargs):
    """A tokenizer / processor / image processor (``auto_cls.from_pretrained``) with one-line errors."""
    try:
        return auto_cls.from_pretrained(str(path), trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise VlmSwapError(f"cannot load the {what} of {path}: {first}") from exc


def load_pretrained(
    model_cls, source: str, *, dtype: torch.dtype | None, trust_remote_code: bool, allow_pickle: bool = False, **kwargs
):
    """``model_cls.from_pretrained`` with safetensors enforced (pickle only with ``allow_pickle``, and then
    with ``weights_only=True``) and errors turned into one line."""
    if Path(source).is_dir():  # a pickle-only dir: refused naming --allow-pickle; a truncated shard: one line
        checked_weight_files(Path(source), allow_pickle=allow_pickle)
    try:
        return model_cls.from_pretrained(
            source,
            dtype=dtype if dtype is not None else "auto",
            use_safetensors=None if allow_pickle else True,  # None: safetensors first, else pytorch_model.bin
            weights_only=True,
            trust_remote_code=trust_remote_code,
            **kwargs,
        )
    except VlmSwapError:
        raise
    except pickle.UnpicklingError as exc:
        raise VlmSwapError(f"refused to load {source}: a pickle weight file holds more than tensors") from exc
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VlmSwapError(f"could not load {model_cls.__name__} from {source}: {first}") from exc


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


# ---- weight readers: keys() / get_tensor(key), whatever the file format ---------------------------------


def open_safetensors(path: Path):
    """``safe_open`` with a one-line error for truncated or corrupted files."""
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as exc:
        raise VlmSwapError(f"corrupted or truncated safetensors file {path}: {exc}") from exc


def load_pickle_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A pickle state dict read with ``weights_only=True`` (memory-mapped for zip-format files).

    A state dict nested under ``state_dict`` / ``model`` / ``module`` (common in ``.ckpt``/``.pt``
    files) is unwrapped; anything that is not a mapping of names to tensors is refused.
    """
    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # the legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise VlmSwapError(
            f"refused to load {path}: it holds more than tensors (weights_only=True forbids code and objects)"
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise VlmSwapError(f"corrupted or truncated pickle file {path}: {first}") from exc
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise VlmSwapError(f"{path} is not a state dict (a mapping of weight names to tensors)")
    return obj


class PickleWeights:
    """A pickle weight file behind the ``safe_open`` interface (``keys`` / ``get_tensor``)."""

    def __init__(self, path: Path):
        self._tensors = load_pickle_tensors(path)

    def __enter__(self) -> PickleWeights:
        return self

    def __exit__(self, *exc) -> None:
        self._tensors = {}

    def keys(self) -> list[str]:
        return list(self._tensors)

    def get_tensor(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    get_slice = get_tensor  # memory-mapped already: a "slice" is the tensor (``.shape`` without reading data)


def open_weights(path: Path, *, allow_pickle: bool = False):
    """A reader for one weight file: safetensors always, pickle files only with ``allow_pickle``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return open_safetensors(path)
    if path.suffix in PICKLE_SUFFIXES and allow_pickle:
        return PickleWeights(path)
    raise VlmSwapError(f"{path} is not a safetensors file; {ALLOW_PICKLE_HINT}")
