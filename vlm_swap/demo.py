"""``vlm-swap demo``: the whole product on the embedded tiny models, offline, on a CPU.

inspect the existing VLM -> check the pair -> upgrade it with the perceiver -> evaluate (fresh
connector: near chance) -> align with ``tiny-cpu.yaml`` -> evaluate again -> answer a question.
Writes ``report.json`` (before/after accuracy) and ``loss.png`` into the output folder.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .checkpoints.atomic import write_json
from .errors import VlmSwapError
from .pairing import verdict

MARKER = "report.json"
TRAIN_SCENES, EVAL_SCENES = 5000, 200


def run_demo(out_dir: Path, console: Console) -> dict:
    from . import zoo
    from .api import load, load_any
    from .evaluation import score
    from .generation import generate_answer
    from .inspection import inspect_source
    from .surgery.pipeline import prepare, upgrade
    from .train.run import train

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MARKER).is_file():
        raise VlmSwapError(f"{out_dir} is not empty and holds no earlier demo; choose another --out")
    for stale in ("upgraded", "run"):  # a rerun starts over
        shutil.rmtree(out_dir / stale, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    console.rule("[bold]1. embedded models")
    models = zoo.build_default(out_dir / "zoo")
    console.print(f"existing VLM: {models['source']}\nperceiver:    {models['perceiver']}", markup=False)

    console.rule("[bold]2. inspect the existing VLM")
    report = inspect_source(str(models["source"]))
    parts = report["parts"]
    console.print(
        f"{report['architecture']}: encoder {parts['encoder']['type']} ({parts['encoder']['params']:,}), "
        f"connector ({parts['connector']['params']:,}), LLM {parts['llm']['type']} ({parts['llm']['params']:,}); "
        f"{report['tokens_per_image']} tokens per image; {report['total_params']:,} parameters"
    )

    console.rule("[bold]3. check the pair")
    checks = prepare(str(models["source"]), f"perceiver:{models['perceiver']}").checks
    for c in checks:
        console.print(f"  {c.status:4}  {c.name}: {c.reason}", markup=False)
    console.print(f"verdict: {verdict(checks)}")

    console.rule("[bold]4. upgrade")
    t = time.perf_counter()
    upgraded = upgrade(str(models["source"]), f"perceiver:{models['perceiver']}", out_dir / "upgraded", force=True)
    timings["upgrade_s"] = time.perf_counter() - t
    console.print(f"upgraded model: {upgraded} ({timings['upgrade_s']:.1f}s)", markup=False)

    console.rule("[bold]5. evaluate before alignment")
    data = zoo.write_dataset(out_dir / "data" / "train", TRAIN_SCENES, seed=1)
    eval_data = zoo.write_dataset(out_dir / "data" / "eval", EVAL_SCENES, seed=2)
    scores = {}
    for name, path in (("source", models["source"]), ("before", upgraded)):
        model, processor = load_any(path)
        scores[name] = score(model, processor, eval_data, eval_data.parent, None, progress=True, label=name)
    console.print(
        f"existing VLM: {scores['source']['accuracy']:.3f}, "
        f"upgraded with a fresh connector: {scores['before']['accuracy']:.3f}"
    )

    console.rule("[bold]6. align (tiny-cpu recipe: connector, then connector + LoRA)")
    t = time.perf_counter()
    run = train("tiny-cpu", upgraded, data, out_dir / "run", images=data.parent, console=console)
    timings["train_s"] = time.perf_counter() - t
    shutil.copyfile(run / "loss.png", out_dir / "loss.png")

    console.rule("[bold]7. evaluate after alignment")
    model, processor = load(run)
    scores["after"] = score(model, processor, eval_data, eval_data.parent, None, progress=True, label="after")
    table = Table("model", "accuracy", title=f"image questions ({EVAL_SCENES} held-out scenes)")
    table.add_row("existing VLM (source)", f"{scores['source']['accuracy']:.3f}")
    table.add_row("upgraded, before alignment", f"{scores['before']['accuracy']:.3f}")
    table.add_row("upgraded, after alignment", f"{scores['after']['accuracy']:.3f}")
    console.print(table)

    console.rule("[bold]8. generate")
    scene = zoo.make_scene(7)
    image_path = out_dir / "scene.png"
    scene.render().save(image_path)
    question, expected = scene.questions()[0]
    answer = "".join(
        generate_answer(str(run), [str(image_path)], question, max_new_tokens=8, model=model, processor=processor)
    )
    console.print(
        f"image: {image_path} ({scene.caption()})\nprompt: {question}\nanswer: {answer.strip()!r} "
        f"(expected {expected!r})",
        highlight=False,
        markup=False,  # the paths are the user's, the answer the model's: neither is markup
    )
    timings["total_s"] = time.perf_counter() - t0
    summary = {
        "before": {"accuracy": scores["before"]["accuracy"]},
        "after": {"accuracy": scores["after"]["accuracy"]},
        "source": {"accuracy": scores["source"]["accuracy"]},
        "gain": scores["after"]["accuracy"] - scores["before"]["accuracy"],
        "eval_scenes": EVAL_SCENES,
        "train_scenes": TRAIN_SCENES,
        "pair_verdict": verdict(checks),
        "upgraded": str(upgraded),
        "run": str(run),
        "answer": answer.strip(),
        "timings": timings,
    }
    write_json(out_dir / MARKER, summary)
    console.print(
        f"done in {timings['total_s']:.0f}s; report in {out_dir / MARKER}, loss curve in {out_dir / 'loss.png'}",
        markup=False,
    )
    console.print(
        "next: `vlm-swap compare --embedded` runs the A/B experiment on these models: the perceiver arm against "
        "the source's own CLIP tower re-aligned, same recipe, with intervals and text forgetting",
        highlight=False,
    )
    return summary
