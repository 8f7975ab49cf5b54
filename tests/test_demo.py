"""`vlm-swap demo` as a user runs it: a real subprocess, offline, on the embedded models."""

from __future__ import annotations

import json
import os
import subprocess

from .helpers import cli_command


def test_demo_aligns_the_upgraded_model(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "demo"
    done = subprocess.run(
        [*cli_command(), "demo", "--out", str(out)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for step in ("inspect", "check the pair", "upgrade", "evaluate before", "align", "evaluate after", "generate"):
        assert step in done.stdout
    closing = " ".join(done.stdout.strip().splitlines()[-4:])
    assert "next: `vlm-swap compare --embedded`" in closing  # the demo's closing lines point to the A/B experiment
    report = json.loads((out / "report.json").read_text())
    assert report["after"]["accuracy"] - report["before"]["accuracy"] >= 0.3, report
    assert (out / "loss.png").stat().st_size > 1000
    assert (out / "run" / "adapter_model.safetensors").is_file()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    refused = subprocess.run(
        [*cli_command(), "demo", "--out", str(foreign)], capture_output=True, text=True, env=env, timeout=300
    )
    assert refused.returncode != 0 and "not empty" in refused.stderr
    assert (foreign / "keep.txt").read_text() == "mine"
