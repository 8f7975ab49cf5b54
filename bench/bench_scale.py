"""Scale-out and precision on CPU: FSDP2 (and DeepSpeed ZeRO-2/3) on 2 processes against one, and the dtype of
the trained parameters of a bf16-stored model.

Builds (in ``--work``) the tiny llava-hf model of the zoo (Qwen3 LLM, CLIP tower) upgraded with the zoo's Qwen3-VL
perceiver, stored in float32 and in bfloat16, and 16 scene questions with 8 text-only rows among them. Then:

- ``fsdp2_cpu_loss_vs_single``: ``tiny-cpu`` (connector for 6 steps, then connector + LoRA for 4) once in one
  process at batch 2 and once through ``accelerate launch --config_file recipes/accelerate/fsdp2.yaml`` on 2
  processes at batch 1 each (the same global batch, the same samples per step); the largest absolute
  difference between the logged losses of the two runs, over every step of both stages. With
  ``--deepspeed-python`` (an interpreter where deepspeed is installed) the same for ``zero2.yaml`` /
  ``zero3.yaml``, stored beside it.
- ``trainable_master_dtype``: the dtype the one-process run of the bfloat16-stored model holds its trained
  parameters in (from the run's facts in ``run.json``).

Losses are compared, not timed, so the figures do not depend on the machine's load.

    python bench/bench_scale.py [--work /tmp/bench-scale] [--deepspeed-python /path/to/venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import record  # noqa: E402

STEPS = {"align": 6, "lora": 4}


def settings(per_device_batch: int) -> list[str]:
    out = []
    for stage, steps in STEPS.items():
        for key, value in (("steps", steps), ("batch_size", per_device_batch), ("logging_steps", 1), ("save_steps", 2)):
            out += ["--set", f"stages.{stage}.{key}={value}"]
    return out


def losses(run: Path) -> list[float]:
    out = []
    for stage in STEPS:
        (final,) = run.glob(f"stage-*-{stage}/final")
        out += [e["loss"] for e in json.loads((final / "log_history.json").read_text()) if "loss" in e]
    return out


def train(python: str, launcher: list[str], model: Path, data: Path, out: Path, batch: int) -> Path:
    cmd = [python, *launcher, "-m", "vlm_swap.cli", "train", "tiny-cpu", "--model", str(model), "--data", str(data),
           "--images", str(data.parent), "--out", str(out), *settings(batch)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-scale"), help="models, data and runs")
    ap.add_argument("--deepspeed-python", default=None, help="a python with deepspeed installed (ZeRO runs)")
    opts = ap.parse_args(argv)

    import shutil

    import vlm_swap
    from vlm_swap import zoo
    from vlm_swap.zoo.world import write_dataset

    work = opts.work
    shutil.rmtree(work / "runs", ignore_errors=True)
    models = {}
    for dtype in ("float32", "bfloat16"):
        models[dtype] = work / f"up-{dtype}"
        if not (models[dtype] / "config.json").is_file():
            src = zoo.build_llava(work / "llava", llm="qwen3", vision="clip")
            enc = zoo.build_perceiver(work / "perceiver")
            vlm_swap.upgrade(str(src), f"perceiver:{enc}", models[dtype], dtype=dtype, force=True)
    data = write_dataset(work / "data", 16, seed=11, texts=8)
    runs = work / "runs"
    single = train(sys.executable, [], models["float32"], data, runs / "single", 2)
    reference = losses(single)

    def launch(config: str, python: str, port: int) -> float:
        launcher = ["-m", "accelerate.commands.launch", "--config_file", f"recipes/accelerate/{config}.yaml",
                    "--num_processes", "2", "--main_process_port", str(port)]  # fmt: skip
        run = train(python, launcher, models["float32"], data, runs / config, 1)
        diff = max(abs(a - b) for a, b in zip(losses(run), reference, strict=True))
        print(f"{config}: {len(reference)} steps, largest |loss - one process| = {diff:.3g}")
        return diff

    extra = {"steps": len(reference), "machine_note": "2 shared cores; losses, not timings"}
    if opts.deepspeed_python:
        extra.update({f"{z}_cpu_loss_vs_single": launch(z, opts.deepspeed_python, 29610 + i) for i, z in
                      enumerate(("zero2", "zero3"))})  # fmt: skip
    record("fsdp2_cpu_loss_vs_single", launch("fsdp2", sys.executable, 29600), goal="<= 1e-3", **extra)

    bf16 = train(sys.executable, [], models["bfloat16"], data, runs / "bf16", 2)
    facts = json.loads((bf16 / "run.json").read_text())["stages"][1]["facts"]["dtypes"]
    trained = {part.split()[1] for d in facts.values() for part in d.split(", ") if part.startswith("trainable")}
    record("trainable_master_dtype", "/".join(sorted(trained)), goal="float32", stored="bfloat16", dtypes=facts)


if __name__ == "__main__":
    main()
