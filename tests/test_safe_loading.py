"""Safe loading: pickle weights only on request and only as tensors, remote code only on request, revisions.

Faults injected: checkpoints whose weights exist only as pickle files; a pickle that runs code when
unpickled (it creates a marker file) as model weights and as a resumed checkpoint's optimizer / RNG
state; a checkpoint whose config asks to run its own Python code; a revision given for a local path;
a shard index that names files outside its checkpoint; a FIFO where a weight file should be.
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
import signal
import subprocess

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

import vlm_swap
from vlm_swap.cli import app
from vlm_swap.errors import VlmSwapError
from vlm_swap.surgery.source import open_source
from vlm_swap.train.run import train
from vlm_swap.zoo.world import write_dataset

from .helpers import cli_command, read_tensors

runner = CliRunner()


class RunsCode:
    """Unpickling this object calls ``open(marker, "w")``: stands for any code a pickle can run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def to_pickle(checkpoint, shards: int = 1) -> None:
    """Replace the safetensors weights of ``checkpoint`` with ``pytorch_model*.bin`` pickle shards."""
    tensors = load_file(str(checkpoint / "model.safetensors"))
    (checkpoint / "model.safetensors").unlink()
    if shards == 1:
        torch.save(tensors, checkpoint / "pytorch_model.bin")
        return
    keys, weight_map = sorted(tensors), {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: tensors[k] for k in keys[i::shards]}
        torch.save(part, checkpoint / name)
        weight_map.update(dict.fromkeys(part, name))
    (checkpoint / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))


def plant_code(path, marker) -> None:
    """Write a pickle that runs code when loaded without weights_only (checked: it does run)."""
    torch.save({"w": RunsCode(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists(), "the planted pickle does not run code; the test would prove nothing"
    marker.unlink()


def clean_failure(result, *fragments):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    for frag in fragments:
        assert frag in result.output, result.output


def test_pickle_source_is_refused_naming_the_flag_then_loads_bit_identical_with_it(tmp_path, llava, vit):
    src = tmp_path / "src"
    shutil.copytree(llava(), src)
    to_pickle(src, shards=2)
    out = tmp_path / "o"
    args = ["upgrade", str(src), "-e", f"hf-vit:{vit()}", "-o", str(out)]
    clean_failure(runner.invoke(app, args), "--allow-pickle", "pytorch_model-00001-of-00002.bin")
    assert not out.exists()

    opened = open_source(str(src), allow_pickle=True)
    streamed = {}
    for shard in opened.weight_files:  # the reader the upgrade streams pickle shards through
        with opened.open(shard) as st:
            streamed.update({key: st.get_tensor(key) for key in st.keys()})
    original = load_file(str(llava() / "model.safetensors"))
    assert streamed.keys() == original.keys() and all(torch.equal(streamed[k], original[k]) for k in original)

    result = runner.invoke(app, [*args, "--allow-pickle"])
    assert result.exit_code == 0, result.output
    reference = vlm_swap.upgrade(str(llava()), f"hf-vit:{vit()}", tmp_path / "ref")
    ours, theirs = read_tensors(out), read_tensors(reference)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_pickle_encoder_loads_with_the_flag(tmp_path, llava, vit):
    enc = tmp_path / "enc"
    shutil.copytree(vit(), enc)
    to_pickle(enc)
    with pytest.raises(VlmSwapError, match="--allow-pickle"):
        vlm_swap.upgrade(str(llava()), f"hf-vit:{enc}", tmp_path / "refused")
    out = vlm_swap.upgrade(str(llava()), f"hf-vit:{enc}", tmp_path / "o", allow_pickle=True)
    reference = vlm_swap.upgrade(str(llava()), f"hf-vit:{vit()}", tmp_path / "ref")
    ours, theirs = read_tensors(out), read_tensors(reference)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if k.startswith("encoder."))


def test_a_pickle_that_runs_code_is_refused_even_with_the_flag(tmp_path, llava, vit):
    src = tmp_path / "src"
    shutil.copytree(llava(), src)
    (src / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    plant_code(src / "pytorch_model.bin", marker)
    out = tmp_path / "o"
    result = runner.invoke(app, ["upgrade", str(src), "-e", f"hf-vit:{vit()}", "-o", str(out), "--allow-pickle"])
    clean_failure(result, "refused to load", "more than tensors")
    assert not marker.exists() and not out.exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, llava, vit):
    """A finished one-stage run with one checkpoint (the state a kill after checkpoint-1 leaves, once final/ goes)."""
    root = tmp_path_factory.mktemp("resume")
    up = vlm_swap.upgrade(str(llava()), f"hf-vit:{vit()}", root / "up")
    data = write_dataset(root / "data", 4, seed=5)
    stage = {"name": "align", "connector": {"mode": "full"}, "steps": 1, "batch_size": 2, "precision": "fp32"}
    stage |= {"max_length": 256, "save_steps": 1, "logging_steps": 1}
    recipe = root / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "one", "stages": [stage]}))
    run = train(str(recipe), up, data, root / "run", images=data.parent, progress=False)
    return root, up, data, recipe, run


@pytest.mark.parametrize("state_file", ["optimizer.pt", "rng_state.pth"])
def test_resume_reads_checkpoint_states_weights_only(tmp_path, trained, state_file):
    """Fault: the checkpoint's optimizer / RNG state is replaced by a pickle that runs code."""
    root, up, data, recipe, run = trained
    killed = tmp_path / "run"
    shutil.copytree(run, killed)
    shutil.rmtree(killed / "stage-1-align" / "final")
    marker = tmp_path / "code-ran"
    plant_code(killed / "stage-1-align" / "checkpoint-1" / state_file, marker)
    with pytest.raises(VlmSwapError, match="refused to resume from .*checkpoint-1") as err:
        train(str(recipe), up, data, killed, images=data.parent, resume=True, progress=False, allow_pickle=True)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_remote_code_runs_only_with_the_flag_and_warns(tmp_path, vit):
    src = tmp_path / "remote"
    src.mkdir()
    marker = tmp_path / "code-ran"
    (src / "configuration_custom.py").write_text(
        f"from transformers import PreTrainedConfig\nopen({str(marker)!r}, 'w').close()\n\n\n"
        "class CustomConfig(PreTrainedConfig):\n    model_type = 'custom-remote'\n"
    )
    config = {"model_type": "custom-remote", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"}}
    (src / "config.json").write_text(json.dumps(config))
    args = ["upgrade", str(src), "-e", f"hf-vit:{vit()}", "-o", str(tmp_path / "o")]
    clean_failure(runner.invoke(app, args), "ships its own model code", "--trust-remote-code")
    clean_failure(runner.invoke(app, ["inspect", str(src)]), "ships its own model code")
    assert not marker.exists()

    result = runner.invoke(app, [*args, "--trust-remote-code"])
    clean_failure(result, "warning: --trust-remote-code", "--revision", "not a supported VLM")
    assert marker.exists()  # the flag was passed through to transformers


def test_revision_pins_a_hub_snapshot_and_is_refused_for_a_local_path(tmp_path, llava, vit):
    """A hub cache with two snapshots of one repo; ``main`` points at the llama2 one, the pin at the qwen2 one."""
    result = runner.invoke(app, ["upgrade", str(llava()), "-e", f"hf-vit:{vit()}", "-o", str(tmp_path / "x")])
    assert result.exit_code == 0, result.output
    clean_failure(
        runner.invoke(
            app, ["upgrade", str(llava()), "-e", f"hf-vit:{vit()}", "-o", str(tmp_path / "y"), "--revision", "v1"]
        ),
        "--revision pins a hub id",
    )
    repo = tmp_path / "hub" / "models--acme--tiny-llava"
    main, pinned = "a" * 40, "b" * 40
    shutil.copytree(llava("llama2"), repo / "snapshots" / main)
    shutil.copytree(llava("qwen2"), repo / "snapshots" / pinned)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(main)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    out = tmp_path / "pinned"
    cmd = [*cli_command(), "upgrade", "acme/tiny-llava", "-e", f"hf-vit:{vit()}", "-o", str(out), "--revision", pinned]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "vlm_swap.json").read_text())["llm_family"] == "qwen2"


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "../outside.safetensors"])
def test_a_shard_index_naming_files_outside_the_checkpoint_is_refused(tmp_path, llava, vit, name):
    src = tmp_path / "src"
    shutil.copytree(llava(), src)
    (src / "model.safetensors").rename(src / "model-00001-of-00001.safetensors")
    (tmp_path / "outside.safetensors").write_bytes((src / "model-00001-of-00001.safetensors").read_bytes())
    index = {"weight_map": {"lm_head.weight": "model-00001-of-00001.safetensors", "x": name}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    out = tmp_path / "o"
    result = runner.invoke(app, ["upgrade", str(src), "-e", f"hf-vit:{vit()}", "-o", str(out)])
    clean_failure(result, f"names {name!r}, a file outside")
    assert "--allow-pickle" not in result.output and not out.exists()


def test_a_fifo_named_model_safetensors_is_refused_not_read(tmp_path, llava, vit):
    src = tmp_path / "src"
    shutil.copytree(llava(), src)
    (src / "model.safetensors").unlink()
    os.mkfifo(src / "model.safetensors")

    def hung(*_):
        raise TimeoutError("upgrade blocked reading the FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    try:
        result = runner.invoke(app, ["upgrade", str(src), "-e", f"hf-vit:{vit()}", "-o", str(tmp_path / "o")])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    clean_failure(result, "model.safetensors is not a regular file")
    assert not (tmp_path / "o").exists()
