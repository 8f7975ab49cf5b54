"""Data at scale: the index (cold, warm, memory), time to the first step, loader workers, packing, resume.

The data is synthetic and LLaVA-Pretrain-like, built by this script under ``--work`` (default
``/tmp/vlm-swap-bench-data``, reused by later runs; never in the repository): ``--rows`` rows (100,000)
in one JSON array, one caption request each, about ``--images`` distinct 500x375 JPEGs (10,000, drawn by
the synthetic world). The model is the embedded tiny llava-hf source upgraded with the embedded tiny
Qwen3-VL perceiver, whose image processor is set to a real size: patch 16, 2x2 merge, at most 262,144
pixels (DPA's cap), so a 500x375 image is 192 tokens, as a real Qwen3-VL processor makes it.

- ``data_index_rows_per_s``: rows indexed per second, cold (empty cache), in a fresh process.
- ``data_index_warm_s``: the second ``load_dataset`` of the same data (cache hit), in a fresh process,
  projected to LLaVA-Pretrain's 558,128 rows (it is linear in the rows).
- ``data_index_rss_mb_per_100k_rows``: resident memory added by the warm load, the dataset's lengths and
  one epoch's order, per 100,000 rows.
- ``time_to_first_step_s``: ``vlm-swap train`` as a subprocess on the data, cold cache, from its start
  until the first optimizer step's checkpoint exists.
- ``loader_workers_speedup``: samples per second through the Trainer's kind of DataLoader (batch 16,
  real collator) with 2 workers / with 0, measured alternately in one process; beside it, the rate with 0 workers
  and one torch thread (the per-core rate: torch's default threads already spread the transforms over the cores).
- ``packing_token_utilization``: real tokens / row capacity of the packing plan at max_length 2048.
- ``packed_vs_padded_step_time``: forward + backward time of the same samples packed into rows of 2048
  against padded batches of 8 in random order (equal real tokens), on CPU.
- ``resume_skipped_decodes``: samples of the skipped steps decoded by a resumed run (a run stopped after
  its step-2 checkpoint, resumed, against an uninterrupted one).

On a machine others use at the same time, timings are inflated; ratios are measured side by side.

    python bench/bench_data.py [--rows 100000] [--images 10000] [--work /tmp/vlm-swap-bench-data] [--only index,...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record  # noqa: E402

LLAVA_PRETRAIN_ROWS = 558_128
FIGURES = ("index", "first-step", "loader", "packing", "resume")
PROMPTS = [
    "Give a brief description of the image.",
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.",
    "Summarize the visual content of the image.",
    "Share a concise interpretation of the image provided.",
]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def prepare(work: Path, rows: int, images: int) -> tuple[Path, Path]:
    """The upgraded model (real-sized processor) and the data; built once, reused while complete."""
    import vlm_swap
    from vlm_swap import zoo

    model, data = work / "model", work / f"data-{rows}-{images}.json"
    if not (model / "config.json").is_file():
        shutil.rmtree(work / "zoo", ignore_errors=True)
        built = zoo.build_default(work / "zoo")
        vlm_swap.upgrade(str(built["source"]), f"perceiver:{built['perceiver']}", model)
        config = json.loads((model / "processor_config.json").read_text())
        config["image_processor"].update(patch_size=16, merge_size=2)
        config["image_processor"]["size"] = {"shortest_edge": 65536, "longest_edge": 262144}
        (model / "processor_config.json").write_text(json.dumps(config, indent=2))
    folder = work / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        path = folder / f"{i:06d}.jpg"
        if not path.is_file():
            zoo.make_scene(10_000 + i, (500, 375)).render().save(path, quality=90)
    if not data.is_file():
        rng = random.Random(0)
        words = "a red blue green circle square triangle on the left right of small large picture near".split()
        out = []
        for i in range(rows):
            prompt = rng.choice(PROMPTS)
            human = f"<image>\n{prompt}" if rng.random() < 0.5 else f"{prompt}\n<image>"
            caption = " ".join(rng.choice(words) for _ in range(rng.randint(6, 40)))
            conv = [{"from": "human", "value": human}, {"from": "gpt", "value": caption}]
            out.append({"id": str(i), "image": f"{rng.randrange(images):06d}.jpg", "conversations": conv})
        tmp = data.with_suffix(".tmp")
        tmp.write_text(json.dumps(out))
        tmp.replace(data)
    return model, data


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def phase_index(model: Path, data: Path, images: Path) -> dict:
    """Run in a fresh process: one load_dataset (cold or warm by the cache's state), time and memory."""
    import datasets  # noqa: F401  (imported before timing: a fixed cost, not the data's)

    import vlm_swap
    from vlm_swap.data import EpochSampler, SampleEncoder, SwapDataset, load_dataset

    _, processor = vlm_swap.load(model)
    encoder = SampleEncoder(processor, 2048)
    before = _rss_mb()
    t0 = time.perf_counter()
    samples, report = load_dataset(data, images, encoder)
    seconds = time.perf_counter() - t0
    dataset = SwapDataset(samples, encoder)
    order = EpochSampler(len(dataset), 0, lengths=dataset.lengths, group=16).order()
    return {
        "seconds": seconds,
        "rows": report.rows,
        "kept": report.kept,
        "rss_mb": _rss_mb() - before,
        "order": int(order[0]),
        "mean_length": float(dataset.lengths.mean()),
    }


def _phase(name: str, *args) -> dict:
    cmd = [sys.executable, __file__, "--phase", name, *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), check=False)
    if done.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def time_to_first_step(model: Path, data: Path, images: Path, work: Path) -> float:
    recipe = work / "first-step.yaml"
    recipe.write_text(
        "name: first-step\nstages:\n  - name: align\n    connector: {mode: full}\n    steps: 3\n"
        "    batch_size: 16\n    max_length: 2048\n    precision: fp32\n    save_steps: 1\n    logging_steps: 1\n"
    )
    run = work / "first-step-run"
    shutil.rmtree(run, ignore_errors=True)
    script = Path(sys.executable).with_name("vlm-swap")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "vlm_swap.cli"]
    cmd += ["train", str(recipe), "--model", str(model), "--data", str(data), "--images", str(images)]
    log = work / "first-step.log"
    with open(log, "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([*cmd, "--out", str(run)], env=_env(), stdout=subprocess.DEVNULL, stderr=err)
        first = run / "stage-1-align" / "checkpoint-1"
        while not first.is_dir():
            if proc.poll() is not None:
                raise SystemExit(f"vlm-swap train failed: {log.read_text()[-3000:]}")
            time.sleep(0.1)
        seconds = time.perf_counter() - t0
        proc.kill()
        proc.wait()
    return seconds


def loader_speed(model: Path, data: Path, images: Path, batches: int, rounds: int) -> dict[str, float]:
    import torch

    import vlm_swap
    from vlm_swap.data import Collator, EpochSampler, SampleEncoder, SwapDataset, load_dataset

    _, processor = vlm_swap.load(model)
    encoder = SampleEncoder(processor, 2048)
    samples, _ = load_dataset(data, images, encoder)
    dataset = SwapDataset(samples, encoder)
    collate = Collator(processor.tokenizer.pad_token_id)
    # name -> (workers, torch threads). "0x1": no workers on one thread, the per-core rate that 2 workers can at
    # most double, beside "0" on torch's default threads (if those sped up the transforms, "0" would be faster).
    threads = torch.get_num_threads()
    configs = {"0": (0, threads), "2": (2, threads), "0x1": (0, 1)}
    speeds: dict[str, list[float]] = {name: [] for name in configs}
    for r in range(rounds):
        for name in configs if r % 2 == 0 else reversed(configs):
            workers, intra = configs[name]
            torch.set_num_threads(intra)
            kwargs = {"persistent_workers": True, "prefetch_factor": 4} if workers else {}
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=16, sampler=EpochSampler(len(dataset), r), collate_fn=collate,
                num_workers=workers, **kwargs,
            )  # fmt: skip
            it = iter(loader)
            next(it)  # workers started, first batch in
            t0 = time.perf_counter()
            for _ in range(batches):
                next(it)
            speeds[name].append(batches * 16 / (time.perf_counter() - t0))
            del it, loader
    torch.set_num_threads(threads)
    return {w: statistics.median(v) for w, v in speeds.items()}


def packing_figures(model: Path, data: Path, images: Path, n: int, repeat: int) -> tuple[float, float, dict]:
    import numpy as np
    import torch

    import vlm_swap
    from vlm_swap.data import Collator, Packs, SampleEncoder, SwapDataset, load_dataset

    model_, processor = vlm_swap.load(model, dtype=torch.float32)
    encoder = SampleEncoder(processor, 2048)
    samples, _ = load_dataset(data, images, encoder)
    dataset = SwapDataset(samples, encoder)
    utilization = Packs(dataset.lengths, 2048).utilization
    # the same n samples, padded in batches of 8 (random order) or packed into rows of 2048
    chosen = np.random.default_rng(0).choice(len(dataset), size=n, replace=False)
    feats = [dataset[int(i)] for i in chosen]
    plan = Packs(dataset.lengths[chosen], 2048)
    collate = Collator(processor.tokenizer.pad_token_id)
    padded = [collate(feats[i : i + 8]) for i in range(0, n, 8)]
    packed = [collate([[feats[j] for j in plan[p]]]) for p in range(len(plan))]
    model_.train()

    def step(batches):
        t0 = time.perf_counter()
        for b in batches:
            model_(**b).loss.backward()
        return time.perf_counter() - t0

    times = {"padded": [], "packed": []}
    step(padded[:1]), step(packed[:1])  # warm-up
    for r in range(repeat):
        for name in ("padded", "packed") if r % 2 == 0 else ("packed", "padded"):
            times[name].append(step(padded if name == "padded" else packed))
    ratio = statistics.median(times["packed"]) / statistics.median(times["padded"])
    extra = {"samples": n, "rows_packed": len(plan), "batches_padded": len(padded), "max_length": 2048}
    return utilization, ratio, extra


def resume_decodes(model: Path, data: Path, images: Path, work: Path) -> dict:
    from transformers import TrainerCallback

    from vlm_swap.train.run import train

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt

    sets = ["stages.lora.steps=1", "stages.align.steps=4", "stages.align.batch_size=4", "stages.align.save_steps=2"]
    sets += ["stages.align.max_length=2048", "stages.lora.max_length=2048", "dataloader_workers=0"]
    runs = {}
    for name in ("full", "resumed"):
        shutil.rmtree(work / f"resume-{name}", ignore_errors=True)
    opts = {"images": images, "overrides": sets, "progress": False}
    train("tiny-cpu", model, data, work / "resume-full", **opts)
    try:
        train("tiny-cpu", model, data, work / "resume-resumed", callbacks=[StopAt()], **opts)
    except KeyboardInterrupt:
        pass
    train("tiny-cpu", model, data, work / "resume-resumed", resume=True, **opts)
    for name in ("full", "resumed"):
        runs[name] = json.loads((work / f"resume-{name}" / "run.json").read_text())["stages"][0]["samples_decoded"]
    skipped_samples = 2 * 4  # steps 1-2, batch 4
    return {"skipped": runs["resumed"] - (runs["full"] - skipped_samples), **runs}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/vlm-swap-bench-data"))
    parser.add_argument("--loader-batches", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated subset of {', '.join(FIGURES)}")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.phase == "index":
        print(json.dumps(phase_index(*map(Path, opts.args))))
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = opts.work
    cache = work / "cache"
    os.environ["VLM_SWAP_CACHE"] = str(cache)
    t0 = time.perf_counter()
    model, data = prepare(work, opts.rows, opts.images)
    images = work / "images"
    print(f"data ready in {time.perf_counter() - t0:.0f} s: {data}", flush=True)
    load = [round(x, 2) for x in os.getloadavg()]  # 1, 5, 15 minutes: how quiet the machine was
    extra = {"rows": opts.rows, "distinct_images": opts.images, "load_average_at_start": load}
    only = set(opts.only.split(","))

    if "index" in only:
        shutil.rmtree(cache, ignore_errors=True)
        cold = _phase("index", model, data, images)
        rate = cold["rows"] / cold["seconds"]
        record("data_index_rows_per_s", round(rate), goal=">= 3100 (558k rows in 3 min)", **extra,
               seconds=round(cold["seconds"], 1))  # fmt: skip
        warm = _phase("index", model, data, images)
        projected = warm["seconds"] * LLAVA_PRETRAIN_ROWS / warm["rows"]
        record("data_index_warm_s", round(projected, 2), goal="<= 5 s at 558k rows", **extra,
               measured_s=round(warm["seconds"], 2))  # fmt: skip
        rss = round(warm["rss_mb"] * 100_000 / warm["rows"], 1)
        record("data_index_rss_mb_per_100k_rows", rss, goal="<= 100", **extra)

    if "first-step" in only:
        shutil.rmtree(cache, ignore_errors=True)
        seconds = round(time_to_first_step(model, data, images, work), 1)
        record("time_to_first_step_s", seconds, goal="measured (cold cache)", **extra)

    if "loader" in only:
        speeds = loader_speed(model, data, images, opts.loader_batches, opts.rounds)
        record("loader_workers_speedup", round(speeds["2"] / speeds["0"], 3), goal=">= 1.7 (2 workers / 0)", **extra,
               samples_per_s_0_workers=round(speeds["0"], 1), samples_per_s_2_workers=round(speeds["2"], 1),
               samples_per_s_0_workers_1_thread=round(speeds["0x1"], 1),
               speedup_vs_1_thread=round(speeds["2"] / speeds["0x1"], 3))  # fmt: skip

    if "packing" in only:
        utilization, step_ratio, step_extra = packing_figures(model, data, images, n=96, repeat=opts.rounds)
        record("packing_token_utilization", round(utilization, 4), goal=">= 0.95", **extra, max_length=2048)
        record("packed_vs_padded_step_time", round(step_ratio, 3), goal="< 1 (equal real tokens, CPU)", **step_extra)

    if "resume" in only:
        resumed = resume_decodes(model, data, images, work)
        record("resume_skipped_decodes", resumed["skipped"], goal="= 0", full_run_decodes=resumed["full"],
               resumed_run_decodes=resumed["resumed"])  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"done; bench process peak RSS {peak:.0f} MB")


if __name__ == "__main__":
    main()
