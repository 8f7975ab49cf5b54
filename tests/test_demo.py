"""`vlm-swap demo` as a user runs it: a real subprocess, offline, on the embedded models."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys


def _cmd():
    exe = shutil.which("vlm-swap")
    return [exe] if exe else [sys.executable, "-m", "vlm_swap.cli"]


def test_demo_runs_every_step(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "demo"
    done = subprocess.run([*_cmd(), "demo", "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    for step in ("inspect", "check the pair", "upgrade", "generate"):
        assert step in done.stdout
    summary = json.loads((out / "demo.json").read_text())
    assert (out / "upgraded" / "config.json").is_file()
    assert summary["pair_verdict"] in ("ok", "warn")
    # a second run reuses its own folder; a foreign non-empty folder is refused
    again = subprocess.run([*_cmd(), "demo", "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    refused = subprocess.run(
        [*_cmd(), "demo", "--out", str(foreign)], capture_output=True, text=True, env=env, timeout=300
    )
    assert refused.returncode != 0 and "not empty" in refused.stderr
    assert (foreign / "keep.txt").read_text() == "mine"
