"""Peak memory of ``vlm-swap export --format llava`` on a multi-GB upgraded model: it must not grow with the model.

Builds (once, reused, in a child process) the source of ``bench_upgrade.py`` (a random-initialised llava-hf
``LlavaForConditionalGeneration``, a Llama LLM of TinyLlama's widths: 1.19 B parameters, bfloat16, 2.2 GiB in 5
shards, with a tiny CLIP tower) and upgrades it with the tiny zoo CLIP tower as an ``hf-vit`` encoder and an
``mlp2x-gelu`` connector, the kind of model ``--format llava`` exports. Then, ``--runs`` times, the real command
line ``vlm-swap export UPGRADED --format llava --out OUT`` in a CLI process that imports vlm_swap first (the driver
of ``bench_upgrade.py``), the upgraded model read from the page cache, the previous output deleted before each run;
and once a process that imports the same modules and exits. Peak RSS of each comes from ``wait4``.

Records export_llava_peak_rss_vs_model: (peak RSS of the export process - peak RSS of the imports alone) / the
upgraded model's safetensors bytes: the memory the export itself takes, as a share of the model.

    python bench/bench_export.py [--work /tmp/bench-export] [--runs 3] [--clean]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_upgrade import CLI_DRIVER, build_source, timed, warm  # noqa: E402
from bench.common import record  # noqa: E402


def build_upgraded(work: Path) -> Path:
    """The ``bench_upgrade`` source upgraded to the tiny zoo CLIP tower (hf-vit, mlp2x-gelu), built once."""
    import vlm_swap
    from vlm_swap import zoo

    out = work / "upgraded"
    if (out / ".complete").is_file():
        return out
    source = build_source(work / "source")
    tower = work / "clip"
    if not (tower / "config.json").is_file():
        zoo.build_vit(tower, kind="clip")
    shutil.rmtree(out, ignore_errors=True)
    vlm_swap.upgrade(str(source), f"hf-vit:{tower}", out, connector="mlp2x-gelu", progress=False)
    shutil.rmtree(source)  # only the upgraded model is read from here on
    (out / ".complete").touch()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-export"), help="models and outputs")
    ap.add_argument("--runs", type=int, default=3, help="exports measured (the largest peak is kept)")
    ap.add_argument("--clean", action="store_true", help="delete the work directory at the end")
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.build_only:
        build_upgraded(args.work)
        return
    # built in a child process: a child forked from a parent that held the weights would report the
    # parent's pages in its own peak RSS
    subprocess.run([sys.executable, __file__, "--work", str(args.work), "--build-only"], check=True)
    model = args.work / "upgraded"
    model_bytes = sum(f.stat().st_size for f in model.glob("*.safetensors"))
    out = args.work / "llava"
    shutil.rmtree(out, ignore_errors=True)
    export_cmd = [sys.executable, "-c", CLI_DRIVER, "export", str(model), "--format", "llava", "--out", str(out)]
    imports_cmd = [sys.executable, "-c", "import vlm_swap.cli, vlm_swap.export, vlm_swap.export.llava"]

    warm(model)
    runs, previous = [], None
    for _ in range(args.runs):
        runs.append(timed(export_cmd, out, previous, False, None, driver=True))
        previous = out
    baseline = timed(imports_cmd, args.work, None, False, None).peak
    peak, export_s = max(r.peak for r in runs), statistics.median(r.command for r in runs)
    mib, gib = 2**20, 1024**3
    print(
        f"upgraded model {model_bytes / gib:.2f} GiB, exported in {export_s:.2f} s (median of {args.runs}); "
        f"peak RSS of the export {peak / mib:.0f} MiB, of the imports alone {baseline / mib:.0f} MiB"
    )
    record(
        "export_llava_peak_rss_vs_model",
        round((peak - baseline) / model_bytes, 4),
        goal="<= 0.1",
        peak_rss_bytes=peak,
        import_rss_bytes=baseline,
        model_bytes=model_bytes,
        runs=args.runs,
        export_s=round(export_s, 3),
        note="(peak RSS of the export process - peak RSS of importing the same modules) / the model's shard bytes",
    )
    if args.clean:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
