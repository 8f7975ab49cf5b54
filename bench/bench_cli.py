"""Start-up of the command line: ``vlm-swap --help`` and ``vlm-swap list encoders`` beside ``python -c pass``.

Each of ``--repeat`` rounds starts the three processes back to back (the real console script of this
environment, or ``python -m vlm_swap.cli`` without one), after one untimed round that warms the page
cache and the bytecode caches; load drift reaches the three alike. Figures: the median wall time of
each command, and the ratio of the help's to the bare interpreter's.

    python bench/bench_cli.py [--repeat 21]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record  # noqa: E402


def vlm_swap_command() -> list[str]:
    script = Path(sys.executable).with_name("vlm-swap")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "vlm_swap.cli"]


def wall(cmd: list[str]) -> float:
    """Seconds from starting ``cmd`` to its exit (output discarded)."""
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=21, help="timed rounds")
    opts = parser.parse_args(argv)
    commands = {
        "python": [sys.executable, "-c", "pass"],
        "help": [*vlm_swap_command(), "--help"],
        "list": [*vlm_swap_command(), "list", "encoders"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(opts.repeat + 1):
        for name, cmd in commands.items():
            seconds = wall(cmd)
            if round_:  # round 0 warms the caches
                times[name].append(seconds)
    median = {name: statistics.median(t) for name, t in times.items()}
    extra = {"repeat": opts.repeat, "python_startup_s": round(median["python"], 4)}
    for name, t in times.items():
        print(f"{name}: median {median[name]:.4f} s, min {min(t):.4f} s, max {max(t):.4f} s")
    record(
        "cli_help_vs_python_startup",
        round(median["help"] / median["python"], 2),
        goal="none (the help itself: cli_help_s <= 0.3)",
        **extra,
    )
    record("cli_help_s", round(median["help"], 4), goal="<= 0.3", **extra)
    record("cli_list_s", round(median["list"], 4), goal="<= 0.3 (no torch import)", **extra)


if __name__ == "__main__":
    main()
