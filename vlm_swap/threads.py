"""torch's CPU threads for the command line: never more than the cores this process may use, fewer when
other processes are using them.

torch starts one intra-op thread per core of the machine, whatever share of it this process may use
(a CPU affinity mask, a container's CPU quota) and however busy it is. Threads that outnumber the free
cores wait on each other at every parallel region: on a 2-core machine with one other job, an 80-step
training run was 28x slower with torch's default than with one thread. So, on CPU, the ``vlm-swap``
command sets ``torch.set_num_threads(n)`` with

    n = round(usable cores - the other processes' share of them), at least 1,

where the usable cores are the affinity mask capped by the cgroup CPU quota, and the other processes'
share is the 1-minute load average scaled from the whole machine to those cores. ``OMP_NUM_THREADS``,
when set (by the user, or by torchrun: 1 per process), is left as it is. A program that imports vlm_swap
keeps torch's setting.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")


def cgroup_cpu_quota() -> float | None:
    """The CPU time this process's cgroup may use, in cores (None: no quota, or none readable)."""
    try:
        quota, period = CGROUP_V2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(CGROUP_V1.read_text())
        period = int(CGROUP_V1.with_name("cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 else None
    except (OSError, ValueError):
        return None


def usable_cores() -> int:
    """Cores this process may run on: its affinity mask, capped by its cgroup's CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def thread_count(cores: int, load: float, machine_cores: int) -> int:
    """Threads for ``cores`` usable cores while the machine's ``machine_cores`` carry ``load`` runnable tasks."""
    busy = load * cores / max(machine_cores, cores)  # the others' share of our cores
    return max(1, min(cores, round(cores - busy)))


def use_cpu_threads() -> str:
    """Set torch's intra-op threads as the module docstring says (CPU only); return what was decided."""
    if "OMP_NUM_THREADS" in os.environ:
        return f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} (left as set)"
    import torch

    if torch.cuda.is_available():
        return "a GPU is visible: torch's default"
    cores = usable_cores()
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this system: assume an idle machine
        load = 0.0
    n = thread_count(cores, load, os.cpu_count() or cores)
    torch.set_num_threads(n)
    return f"{n} (usable cores {cores}, load {load:.2f} on {os.cpu_count()} cores; OMP_NUM_THREADS overrides)"
