"""torch's CPU threads under the command line: at most the usable cores, fewer under load, OMP_NUM_THREADS wins."""

from __future__ import annotations

import os
import subprocess

import pytest

from vlm_swap import threads
from vlm_swap.threads import thread_count, usable_cores

from .helpers import cli_command


@pytest.mark.parametrize(
    "cores,load,machine,expected",
    [
        (2, 0.0, 2, 2),  # idle: every usable core
        (2, 1.0, 2, 1),  # one other job on two cores (the 28x case): one thread
        (2, 7.0, 2, 1),  # overloaded: never below one
        (4, 0.3, 4, 4),
        (8, 16.0, 64, 6),  # 8 usable of 64 cores, a quarter of the machine busy: 2 of ours taken
        (1, 0.0, 64, 1),  # a taskset of one core on a big idle machine
    ],
)
def test_thread_count(cores, load, machine, expected):
    assert thread_count(cores, load, machine) == expected


def test_a_cgroup_quota_caps_the_usable_cores(tmp_path, monkeypatch):
    quota = tmp_path / "cpu.max"
    monkeypatch.setattr(threads, "CGROUP_V2", quota)
    quota.write_text("150000 100000\n")  # 1.5 cores
    assert usable_cores() == min(2, len(os.sched_getaffinity(0)))
    quota.write_text("max 100000\n")
    assert usable_cores() == len(os.sched_getaffinity(0))


def _cli_threads(model, env_extra: dict, cpus: set[int] | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | env_extra | {"CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(  # a command that imports torch (listings do not, so they set no threads)
        [*cli_command(), "--debug", "inspect", str(model), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    assert done.returncode == 0, done.stderr
    return next(line for line in done.stderr.splitlines() if line.startswith("torch CPU threads:"))


def test_the_command_uses_the_cores_it_may_use_and_leaves_omp_num_threads_alone(llava):
    one = {min(os.sched_getaffinity(0))}
    assert _cli_threads(llava(), {}, one).startswith("torch CPU threads: 1 (usable cores 1,")
    assert _cli_threads(llava(), {"OMP_NUM_THREADS": "3"}) == "torch CPU threads: OMP_NUM_THREADS=3 (left as set)"
