"""One process per run directory: `vlm-swap train` holds an exclusive lock on its run directory.

The end-to-end case (a live run refuses a second process; kill -9, then --resume) is in
tests/test_kill_resume.py; these check the refusal, the stale lock and the clean-up without training.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from vlm_swap.cli import app
from vlm_swap.errors import VlmSwapError
from vlm_swap.train.lock import LOCK_NAME, RunDirInUse, hold_lock

runner = CliRunner()


def _train(out, *extra):
    # the model and data do not exist: a run that gets past the lock stops at them, before any write
    args = ["train", "tiny-cpu", "--model", "/nonexistent/model", "--data", "/nonexistent/d.json", "--out", out]
    return runner.invoke(app, [str(a) for a in (*args, *extra)])


def test_a_second_process_on_a_run_directory_is_refused_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    with hold_lock(run) as lock:
        (run / "recipe.yaml").write_text("from the first run\n")
        for extra in ((), ("--resume",)):
            result = _train(run, *extra)
            assert result.exit_code != 0 and "Traceback" not in result.output
            lines = result.output.strip().splitlines()
            assert len(lines) == 1, result.output
            assert f"in use by process {os.getpid()}" in lines[0] and str(run) in lines[0]
        assert lock.read_text().split()[0] == str(os.getpid())
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME, "recipe.yaml"]
        with pytest.raises(RunDirInUse, match="in use"):  # also within one process: locks are per open file
            with hold_lock(run):
                pass
    assert sorted(p.name for p in run.iterdir()) == ["recipe.yaml"]  # released and removed


def test_a_stale_lock_of_a_dead_process_does_not_block(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / LOCK_NAME).write_text(f"{dead.stdout.strip()} somehost\n")  # what a kill -9 leaves
    result = _train(run)
    assert result.exit_code != 0 and "in use" not in result.output  # got past the lock, stopped at the model
    assert "path not found" in result.output
    with hold_lock(run) as lock:  # and the next holder writes its own PID over the stale one
        assert lock.read_text().split()[0] == str(os.getpid())


def test_a_run_that_fails_before_writing_leaves_nothing(tmp_path):
    run = tmp_path / "new" / "run"
    assert _train(run).exit_code != 0
    assert not (tmp_path / "new").exists()  # neither the run directory nor the parent it created
    existing = tmp_path / "mine"
    existing.mkdir()
    assert _train(existing).exit_code != 0
    assert existing.is_dir() and not any(existing.iterdir())  # a directory of the user's stays, empty


def test_the_lock_is_released_when_the_block_raises(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(VlmSwapError, match="boom"):
        with hold_lock(run):
            raise VlmSwapError("boom")
    with hold_lock(run):
        pass


def test_a_forked_child_does_not_keep_the_lock_of_a_killed_holder(tmp_path):
    """Dataloader workers are forked: when the holder is killed they may live on a moment, without the lock."""
    run = tmp_path / "run"
    code = (
        "import os, signal, sys, time\n"
        "from vlm_swap.train.lock import hold_lock\n"
        "with hold_lock(sys.argv[1]):\n"
        "    child = os.fork()\n"
        "    if child == 0:\n"
        "        null = os.open(os.devnull, os.O_WRONLY)\n"
        "        os.dup2(null, 1), os.dup2(null, 2)\n"  # let the test read the holder's output to its end
        "        time.sleep(60)\n"  # an orphaned worker, still alive after its parent is gone
        "        os._exit(0)\n"
        "    print('held', child, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    holder = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, timeout=60)
    assert holder.returncode == -9 and "held" in holder.stdout, holder.stderr
    child = int(holder.stdout.split()[1])
    try:
        with hold_lock(run) as lock:  # the child still runs, the lock is free
            assert lock.read_text().split()[0] == str(os.getpid())
    finally:
        os.kill(child, signal.SIGKILL)
