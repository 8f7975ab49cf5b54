"""Loading pretrained parts safely: weights read without running code, remote code only on opt-in.

Weights are safetensors; pickle weights (``.bin``, ``.pt``, ...) are read only when the caller opts
in with ``allow_pickle``, and even then with ``torch.load(weights_only=True)`` (memory-mapped where
the file format allows), which refuses anything but tensors and plain containers. A checkpoint that
ships its own model code (``auto_map``) is refused unless ``trust_remote_code`` is passed. Configs,
tokenizers, processors and models load through transformers with their errors turned into one
line. A weight file is read through a reader with ``keys()`` / ``get_tensor(key)``, whatever its
format (``open_weights``). Which files a checkpoint holds is ``resolve``'s.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, PreTrainedConfig

from ..errors import VlmSwapError, first_line
from ..format.compat import torch_load_tensors
from .atomic import read_json
from .resolve import ALLOW_PICKLE_HINT, PICKLE_SUFFIXES, checked_weight_files


def load_config(path: str | Path, trust_remote_code: bool = False) -> PreTrainedConfig:
    """``AutoConfig.from_pretrained`` with one-line errors; a config that ships code needs ``trust_remote_code``."""
    raw = Path(path) / "config.json"
    if not trust_remote_code and raw.is_file() and "auto_map" in read_json(raw):
        raise VlmSwapError(f"{path} ships its own model code (auto_map); pass --trust-remote-code to run it")
    try:
        return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        first = first_line(exc)
        raise VlmSwapError(f"cannot read the config of {path}: {first}") from exc


def load_auto(auto_cls, path: str | Path, what: str, *, trust_remote_code: bool, **kwargs):
    """A tokenizer / processor / image processor (``auto_cls.from_pretrained``) with one-line errors."""
    try:
        return auto_cls.from_pretrained(str(path), trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = first_line(exc)
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
        first = first_line(exc)
        raise VlmSwapError(f"could not load {model_cls.__name__} from {source}: {first}") from exc


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
        obj = torch_load_tensors(path)
    except pickle.UnpicklingError as exc:
        raise VlmSwapError(
            f"refused to load {path}: it holds more than tensors (weights_only=True forbids code and objects)"
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        first = first_line(exc)
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
