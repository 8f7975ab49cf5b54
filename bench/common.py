"""Shared by the bench scripts: timing, peak memory, and recording figures in bench/results.json.

Each key of ``results.json`` holds ``{"value", "command", "machine", ...}`` so every figure can be
reproduced by the command stored beside it, on the machine it names.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().with_name("results.json")


def machine() -> str:
    """CPU model and core count (and the GPU when one is visible)."""
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{cpu}, {len(os.sched_getaffinity(0))} cores, {platform.system()}"
    import torch

    if torch.cuda.is_available():
        desc += f", {torch.cuda.get_device_name(0)}"
    return desc


def command() -> str:
    """How this script was invoked, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(RESULTS.parent.parent)
    except ValueError:
        pass
    return " ".join(["python", str(script), *sys.argv[1:]])


def record(name: str, value: float, *, goal: str | None = None, **extra) -> None:
    """Store one figure (atomically) and print it."""
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    entry = {"value": value, "command": command(), "machine": machine()}
    if goal is not None:
        entry["goal"] = goal
    entry.update(extra)
    data[name] = entry
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, RESULTS)
    print(f"{name} = {value}" + (f"  (goal {goal})" if goal else ""))


def median_time(fn: Callable[[], object], *, repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
