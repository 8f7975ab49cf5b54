"""The embedded A/B experiment end to end: ``vlm-swap compare --embedded``, timed, its figures recorded.

Runs the real command line in a child process (imports, writing the embedded models and data, two
upgrades, two ``tiny-cpu`` trainings, three evaluations, the report), from an empty directory, and
records its wall time (goal: at most 12 minutes on two CPU cores) and the report's headline figures:
image and text accuracy of the source and each arm with their 95% intervals, each arm's forgetting,
and the perceiver arm's forgetting reduction against the CLIP-tower arm. The load average before and
after is stored beside them: on a shared machine the wall time is inflated by the others' work.

    python bench/bench_compare.py [--out /tmp/bench-compare] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record  # noqa: E402

from vlm_swap.checkpoints.atomic import read_json  # noqa: E402

GOAL_S = 12 * 60


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-compare"), help="the comparison directory")
    parser.add_argument("--keep", action="store_true", help="keep the comparison directory afterwards")
    opts = parser.parse_args(argv)
    shutil.rmtree(opts.out, ignore_errors=True)  # a fresh run, not a continued one
    cli = Path(sys.executable).with_name("vlm-swap")
    cmd = [str(cli)] if cli.is_file() else [sys.executable, "-m", "vlm_swap.cli"]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    subprocess.run([*cmd, "compare", "--embedded", "--out", str(opts.out)], check=True)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    report = read_json(opts.out / "report.json")
    figures = {}
    for m in report["models"]:
        figures[m["name"]] = {
            "image_accuracy": m["image"]["accuracy"],
            "image_ci95": m["image"]["ci95"],
            "text_accuracy": m["text"]["accuracy"],
            "text_ci95": m["text"]["ci95"],
            "text_perplexity": round(m["text"]["perplexity"], 4),
            **(
                {"forgetting": m["forgetting"]["value"], "forgetting_ci95": m["forgetting"]["ci95"]}
                if "forgetting" in m
                else {}
            ),
            **({"wall_s": round(m["wall_s"]["total"], 1)} if "wall_s" in m else {}),
        }
    load = {
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
    }
    load["threads"] = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    record("compare_embedded_wall_s", round(wall, 1), goal=f"<= {GOAL_S}", models=figures, **load)
    (reduction,) = report["forgetting_reduction"]
    record(
        "compare_embedded_forgetting_reduction",
        None if reduction["value"] is None else round(reduction["value"], 4),
        goal="none (what the embedded world shows)",
        ci95=reduction["ci95"],
        arm=reduction["arm"],
        against=reduction["against"],
        findings=report["findings"],
        threads=load["threads"],
    )
    if not opts.keep:
        shutil.rmtree(opts.out, ignore_errors=True)


if __name__ == "__main__":
    main()
