"""A model directory's files beside its weights, and the weights of a model held in memory.

A directory that loads on its own holds, besides its safetensors shards, the model's config, its
processor (tokenizer, image processor, chat template), its generation config and vlm-swap's
provenance file (``vlm_swap.json``: what was done to which inputs). ``write_model_extras`` writes
whichever of these a command has, for every command that writes a model (upgrade, a training
stage's full-model ``final/``, merge, export); ``save_model`` writes the weights of a model that is
in memory (a trained or merged model) through its own ``save_pretrained``, which transformers and
peft write as safetensors. Weights streamed from other files go through ``shards.ShardWriter``
instead. Everything here writes into a directory of ``atomic.atomic_dir``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .atomic import read_json, write_json
from .guards import PROVENANCE_NAME


def save_model(model, directory: Path, *, state_dict: dict | None = None) -> None:
    """The weights (``state_dict``, else the model's own) and config of a transformers or peft model."""
    model.save_pretrained(directory, state_dict=state_dict)


def write_model_extras(
    directory: Path,
    *,
    config=None,
    processor=None,
    generation_config=None,
    provenance: dict[str, Any] | None = None,
) -> None:
    """Write the given files of a model directory: config, processor, generation config, provenance."""
    for part in (config, processor, generation_config):
        if part is not None:
            part.save_pretrained(directory)
    if provenance is not None:
        write_json(Path(directory) / PROVENANCE_NAME, provenance)


def read_provenance(directory: str | Path) -> dict[str, Any]:
    """The provenance of a model directory written by vlm-swap; empty for any other directory."""
    path = Path(directory) / PROVENANCE_NAME
    return read_json(path) if path.is_file() else {}
