"""``vlm-swap demo``: inspect -> pairs -> upgrade -> generate on the embedded tiny models."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from .compat import verdict
from .errors import VlmSwapError
from .io import write_json

MARKER = "demo.json"


def run_demo(out_dir: Path, console: Console) -> dict:
    from . import zoo
    from .api import load
    from .generation import generate_answer
    from .inspection import inspect_source
    from .upgrade import prepare, upgrade

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MARKER).is_file():
        raise VlmSwapError(f"{out_dir} is not empty and holds no earlier demo; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    console.rule("[bold]1. embedded models")
    models = zoo.build_default(out_dir / "zoo")
    console.print(f"existing VLM: {models['source']}\nperceiver:    {models['perceiver']}")
    timings["build_zoo_s"] = time.perf_counter() - t0

    console.rule("[bold]2. inspect the existing VLM")
    report = inspect_source(str(models["source"]))
    parts = report["parts"]
    console.print(
        f"{report['architecture']}: encoder {parts['encoder']['type']} ({parts['encoder']['params']:,}), "
        f"connector ({parts['connector']['params']:,}), LLM {parts['llm']['type']} "
        f"({parts['llm']['params']:,}); {report['tokens_per_image']} tokens per image; "
        f"{report['total_params']:,} parameters"
    )

    console.rule("[bold]3. check the pair")
    prepared = prepare(str(models["source"]), f"perceiver:{models['perceiver']}")
    checks = prepared.checks
    for c in checks:
        console.print(f"  {c.status:4}  {c.name}: {c.reason}")
    console.print(f"verdict: {verdict(checks)}")

    console.rule("[bold]4. upgrade")
    t = time.perf_counter()
    upgraded = upgrade(str(models["source"]), f"perceiver:{models['perceiver']}", out_dir / "upgraded", force=True)
    timings["upgrade_s"] = time.perf_counter() - t
    console.print(f"upgraded model: {upgraded} ({timings['upgrade_s']:.1f}s)")

    console.rule("[bold]5. generate")
    scene = zoo.make_scene(7)
    image_path = out_dir / "scene.png"
    scene.render().save(image_path)
    model, processor = load(upgraded)
    question = scene.questions()[0][0]
    console.print(f"image: {image_path} ({scene.caption()})\nprompt: {question}\nanswer: ", end="")
    answer = "".join(
        generate_answer(str(upgraded), [str(image_path)], question, max_new_tokens=12, model=model, processor=processor)
    )
    console.print(repr(answer), highlight=False)
    console.print("[dim]The connector is fresh, so the answer is noise until it is aligned by fine-tuning.[/]")
    timings["total_s"] = time.perf_counter() - t0
    summary = {
        "source": str(models["source"]),
        "perceiver": str(models["perceiver"]),
        "upgraded": str(upgraded),
        "pair_verdict": verdict(checks),
        "answer": answer,
        "timings": timings,
    }
    write_json(out_dir / MARKER, summary)
    console.print(f"done in {timings['total_s']:.1f}s; summary in {out_dir / MARKER}")
    return summary
