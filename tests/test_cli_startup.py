"""The commands that report (help, list, pairs, inspect of a catalog model) start without the heavy libraries.

Run as a real subprocess (the console script, or ``python -m vlm_swap.cli``) with Python's import-time
log, which names every module the process imported.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from .helpers import cli_command

HEAVY = {"torch", "transformers", "torchvision", "timm", "open_clip", "peft", "datasets", "accelerate"}


def imported_by(*args: str) -> set[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPROFILEIMPORTTIME": "1"}
    done = subprocess.run([*cli_command(), *args], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["upgrade", "--help"],
        ["train", "--help"],
        ["list", "encoders"],
        ["list", "catalog"],
        ["list", "sources", "--json"],
        ["list", "recipes"],
        ["pairs", "--llm", "qwen3-4b"],
        ["inspect", "qwen3-4b"],
        ["inspect", "llava-1.5-7b-hf", "--json"],
        ["inspect", "qwen3-vl-2b"],
    ],
    ids=" ".join,
)
def test_reporting_commands_import_neither_torch_nor_transformers(args):
    modules = imported_by(*args)
    assert "vlm_swap.cli" in modules  # the log is the command's
    assert not {m.split(".")[0] for m in modules} & HEAVY, sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_inspecting_a_checkpoint_imports_them(llava):
    """The log sees them when a command needs them (so the test above can fail)."""
    assert {"torch", "transformers"} <= imported_by("inspect", str(llava()))
