"""Numerical guard: non-finite steps are skipped, training stops after max_bad_steps, nothing non-finite is saved.

The fault injected is a real corrupted checkpoint: one connector weight set to NaN on disk.
"""

from __future__ import annotations

import json

import pytest
import yaml
from safetensors.torch import load_file, save_file

import vlm_swap
from vlm_swap.train.engine import NonFiniteError
from vlm_swap.train.run import train
from vlm_swap.zoo.world import write_dataset


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory, llava, vit):
    root = tmp_path_factory.mktemp("nan")
    up = vlm_swap.upgrade(str(llava()), f"hf-vit:{vit()}", root / "up")
    index = json.loads((up / "model.safetensors.index.json").read_text())
    weights = up / index["weight_map"]["connector.0.weight"]
    tensors = load_file(str(weights))
    tensors["connector.0.weight"][0, 0] = float("nan")
    save_file(tensors, str(weights), metadata={"format": "pt"})
    data = write_dataset(root / "data", 8, seed=3)
    return root, up, data


def _recipe(tmp_path, **stage):
    path = tmp_path / "r.yaml"
    base = {
        "name": "align",
        "connector": {"mode": "full"},
        "steps": 6,
        "batch_size": 4,
        "precision": "fp32",
        "max_length": 256,
        "save_steps": 10,
        "max_bad_steps": 2,
    }
    path.write_text(yaml.safe_dump({"name": "guard", "stages": [{**base, **stage}]}))
    return str(path)


def test_training_stops_after_max_bad_steps(poisoned, tmp_path):
    _, up, data = poisoned
    with pytest.raises(NonFiniteError, match=r"stopped at step 2: 2 steps with a non-finite loss or gradient"):
        train(_recipe(tmp_path), up, data, tmp_path / "run", images=data.parent, progress=False)
    assert not list((tmp_path / "run").glob("stage-*/checkpoint-*"))
    assert not (tmp_path / "run" / "stage-1-align" / "final").exists()


def test_a_non_finite_state_is_never_saved(poisoned, tmp_path):
    _, up, data = poisoned
    with pytest.raises(NonFiniteError, match="refusing to save a checkpoint"):
        train(
            _recipe(tmp_path, save_steps=1, max_bad_steps=5),
            up,
            data,
            tmp_path / "run",
            images=data.parent,
            progress=False,
        )
    assert not list((tmp_path / "run").glob("stage-*/checkpoint-*"))
