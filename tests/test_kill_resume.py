"""kill -9 in the middle of `vlm-swap train`, then --resume: same final step, loss and adapter.

The fault injected is SIGKILL of the training process right after a stage-1 checkpoint is
complete (the process may be writing the next one when it dies). While it runs, a second process
on its run directory is refused (the run directory's lock); the lock dies with the killed process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from safetensors.torch import load_file

import vlm_swap
from vlm_swap.train.lock import LOCK_NAME
from vlm_swap.zoo.world import write_dataset

from .helpers import cli_command

SETTINGS = [
    "stages.align.steps=12",
    "stages.lora.steps=6",
    "stages.align.batch_size=4",
    "stages.lora.batch_size=4",
    "stages.align.save_steps=2",
    "stages.lora.save_steps=2",
    "stages.align.logging_steps=1",
    "stages.lora.logging_steps=1",
]


def _train(model, data, out, *extra):
    cmd = [
        *cli_command(),
        "train",
        "tiny-cpu",
        "--model",
        str(model),
        "--data",
        str(data),
        "--images",
        str(data.parent),
        "--out",
        str(out),
        *[a for o in SETTINGS for a in ("--set", o)],
        *extra,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return cmd, env


def _a_second_process_is_refused(proc, up, data, run):
    """While ``proc`` trains in ``run`` (held still with SIGSTOP), a second --resume fails naming its PID."""
    lock = run / LOCK_NAME
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not (lock.is_file() and lock.read_text().strip()):
        time.sleep(0.02)
    proc.send_signal(signal.SIGSTOP)
    try:
        assert lock.read_text().split()[0] == str(proc.pid)
        cmd, env = _train(up, data, run, "--resume")
        second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    finally:
        proc.send_signal(signal.SIGCONT)
    assert second.returncode != 0 and "Traceback" not in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    assert f"in use by process {proc.pid}" in second.stderr


@pytest.mark.slow
def test_kill_then_resume_matches_an_uninterrupted_run(tmp_path, llava, perceiver):
    up = vlm_swap.upgrade(str(llava()), f"perceiver:{perceiver()}", tmp_path / "up")
    data = write_dataset(tmp_path / "data", 16, seed=9)

    cmd, env = _train(up, data, tmp_path / "full")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    cmd, env = _train(up, data, tmp_path / "killed")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _a_second_process_is_refused(proc, up, data, tmp_path / "killed")
    marker = tmp_path / "killed" / "stage-1-align" / "checkpoint-6" / "trainer_state.json"
    deadline = time.time() + 300
    while not marker.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "killed" / "adapter_model.safetensors").exists()
    # checkpoints are renamed into place whole: whatever the kill interrupted is only a hidden temporary
    for ckpt in (tmp_path / "killed" / "stage-1-align").glob("checkpoint-*"):
        assert all((ckpt / f).is_file() for f in ("trainer_state.json", "optimizer.pt", "scheduler.pt")), ckpt

    lock = tmp_path / "killed" / LOCK_NAME  # left by the killed run; its lock died with it
    assert lock.read_text().split()[0] == str(proc.pid)

    cmd, env = _train(up, data, tmp_path / "killed", "--resume")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not lock.exists()  # a run that ends removes its lock file

    assert not list((tmp_path / "killed").rglob(".checkpoint-*.tmp"))  # the resumed run replaced the temporary
    full = json.loads((tmp_path / "full" / "run.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "run.json").read_text())
    assert resumed["stages"][0]["resumed_from"]  # stage 1 continued from a checkpoint, not from scratch
    assert [s["steps"] for s in resumed["stages"]] == [s["steps"] for s in full["stages"]] == [12, 6]
    assert resumed["final_loss"] == pytest.approx(full["final_loss"], rel=1e-5)
    a = load_file(str(tmp_path / "full" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max() < 1e-5, k
