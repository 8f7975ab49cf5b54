"""``vlm-swap compare``: the A/B experiment, every arm upgraded from one source and trained alike.

Each arm (an encoder spec) is upgraded from the same source and trained with the same recipe,
data file (so the same data order), seeds and step budget; the untouched source and every arm are
then scored on the same rows (``evaluation.score``). The comparison directory holds::

    compare.json           the experiment (source, resolved recipe, data files); a rerun must match it
    arms/NAME/arm.json     the arm's encoder spec
    arms/NAME/upgraded/    an ordinary ``vlm-swap upgrade`` output
    arms/NAME/run/         an ordinary ``vlm-swap train`` run: export, merge or serve it like any other
    arms/NAME/clock.json   wall time of the upgrade and of each stage, kept across a kill and a resume (compare_clock)
    arms/NAME/scores.json  the arm's scores with every row's outcome (written once the arm is scored)
    source/scores.json     the same for the source
    report.json report.md compare.png   (``compare_report``)

A rerun continues where it stopped: upgrades and scores that exist are kept (both are written
atomically, so existing means complete), finished runs are kept, a killed run resumes from its
newest complete checkpoint (``train(..., resume=True)``), and arms may be added. Before anything is loaded, arm specs
(kind, form, duplicates), the recipe, the input files and the evaluation rows are checked; every
arm is then upgraded before any is trained, and the upgrade runs the pair checks, so a bad arm
stops the command in one line before any training. Under ``torchrun`` the upgrades, scores and
report are made by the main process only; training runs on every process.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.text import Text

from .backends import EncoderSpec
from .checkpoints.atomic import atomic_dir, read_json, write_json
from .checkpoints.guards import RUN_SUMMARY_NAME, check_not_an_input
from .compare_clock import ArmClock, add_upgrade_time, read_clock
from .errors import VlmSwapError

EXPERIMENT_NAME = "compare.json"
SCORES_NAME = "scores.json"
LMMS_NAME = "lmms.json"
REPORT_FILES = ("report.json", "report.md", "compare.png")
AMENDABLE = ("lmms_tasks",)  # fields of compare.json a rerun may change


@dataclass(frozen=True)
class Arm:
    name: str  # the folder under arms/
    spec: EncoderSpec


@dataclass
class Experiment:
    """What every arm shares; stored in ``compare.json`` (paths absolute)."""

    source: str
    recipe: str
    overrides: list[str]
    resolved_recipe: dict
    data: str
    images: str | None
    eval_data: str
    eval_images: str | None
    text_data: str | None
    lmms_tasks: list[str] = field(default_factory=list)


def _absolute(path: str | Path | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().absolute())


def parse_arms(texts: list[str] | tuple[str, ...]) -> list[EncoderSpec]:
    """Arm specs checked without loading anything: form, kind (closest kinds named), duplicates."""
    if not texts:
        raise VlmSwapError("nothing to compare: pass --arm KIND:SOURCE at least once")
    specs: list[EncoderSpec] = []
    for text in texts:
        try:
            spec = EncoderSpec.parse(text)
        except VlmSwapError as exc:
            raise VlmSwapError(f"--arm {text}: {exc}") from None
        if spec in specs:
            raise VlmSwapError(f"--arm {text} is given twice")
        specs.append(spec)
    return specs


def plan(
    source: str,
    arms: list[str] | tuple[str, ...],
    recipe: str,
    data: str | Path,
    eval_data: str | Path,
    *,
    images: str | Path | None = None,
    eval_images: str | Path | None = None,
    text_data: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    lmms_tasks: list[str] | tuple[str, ...] = (),
    check_files: bool = True,
) -> tuple[Experiment, list[EncoderSpec]]:
    """The pre-flight: everything that can be checked before a model is loaded."""
    from .train.recipe import load_recipe, recipe_to_dict

    specs = parse_arms(arms)
    resolved = recipe_to_dict(load_recipe(recipe, overrides))
    if lmms_tasks:
        from .integrations.lmms_eval.scores import require_lmms_eval

        require_lmms_eval()
    source_path = Path(source).expanduser()
    exp = Experiment(
        source=_absolute(source) if source_path.exists() else source,
        recipe=_absolute(recipe) if Path(recipe).is_file() else recipe,  # a YAML file, or a shipped name
        overrides=list(overrides),
        resolved_recipe=resolved,
        data=_absolute(data),
        images=_absolute(images),
        eval_data=_absolute(eval_data),
        eval_images=_absolute(eval_images if eval_images is not None else images),
        text_data=_absolute(text_data),
        lmms_tasks=list(lmms_tasks),
    )
    if check_files:
        _check_inputs(exp)
    return exp, specs


def _check_inputs(exp: Experiment) -> None:
    from .data.formats import DataError, RowError, parse_row, read_rows

    for flag, path in (("--data", exp.data), ("--eval-data", exp.eval_data), ("--text-data", exp.text_data)):
        if path is not None and not Path(path).is_file():
            raise VlmSwapError(f"{flag} {path}: file not found")
    for flag, path in (("--images", exp.images), ("--eval-images", exp.eval_images)):
        if path is not None and not Path(path).is_dir():
            raise VlmSwapError(f"{flag} {path}: folder not found")
    # the scored rows are read now, so a bad row stops the command before hours of training, not after
    for path, folder, max_images in ((exp.eval_data, exp.eval_images, 8), (exp.text_data, None, 0)):
        if path is None:
            continue
        bad = []
        for line, row in read_rows(Path(path)):
            try:
                parse_row(row, Path(folder) if folder else None, max_images)
            except RowError as exc:
                bad.append(f"line {line}: {exc}")
        if bad:
            raise DataError(f"{path}: {len(bad)} bad rows — {'; '.join(bad[:3])}")


def claim(out: Path, exp: Experiment) -> None:
    """Make ``out`` this experiment's directory: empty, or holding the same experiment (a rerun)."""
    inputs = (exp.source, exp.data, exp.images, exp.eval_data, exp.eval_images, exp.text_data)
    for name in ("arms", "source", EXPERIMENT_NAME, *REPORT_FILES):  # what compare writes
        check_not_an_input(out / name, inputs)
    stored, now = out / EXPERIMENT_NAME, asdict(exp)
    if stored.is_file():
        before = read_json(stored)
        # what the arms were trained and scored with must match; lmms-eval tasks may change (scored anew)
        changed = ", ".join(sorted(k for k in now if k not in AMENDABLE and before.get(k) != now[k]))
        if changed:
            raise VlmSwapError(f"{out} holds a comparison with another {changed}; rerun it as it was, or another --out")
        if before != now:
            write_json(stored, now)
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise VlmSwapError(f"{out} is not empty and holds no comparison ({EXPERIMENT_NAME}); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json(stored, now)


def arm_dirs(out: Path, specs: list[EncoderSpec]) -> list[Arm]:
    """A folder per arm, named after its kind and source; an existing folder is reused only by its own spec."""
    arms: list[Arm] = []
    for spec in specs:
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(spec.source.rstrip("/")).name).strip("-.") or "encoder"
        for i in range(1, 1000):
            name = f"{spec.kind}-{base}" + (f"-{i}" if i > 1 else "")
            marker = out / "arms" / name / "arm.json"
            taken = name in {a.name for a in arms}
            if not taken and (not marker.is_file() or read_json(marker).get("encoder") == str(spec)):
                break
        arms.append(Arm(name, spec))
    return arms


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _wait_for_everyone() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def run(exp: Experiment, arms: list[Arm], out: Path, *, console=None, progress: bool = True) -> dict[str, Any]:
    """Upgrade every arm, train every arm, score the source and every arm, write the report."""
    from .compare_report import build_report, print_report, write_report

    def say(text: str) -> None:  # plain text: specs and paths are neither markup nor emoji codes
        if console is not None:
            console.rule(Text(text, style="bold"))

    if _rank() == 0:
        for arm in arms:
            _upgrade(exp, arm, out / "arms" / arm.name, say, progress)
    _wait_for_everyone()
    for arm in arms:
        _train(exp, arm, out / "arms" / arm.name, say, console, progress)
    if _rank() != 0:
        return {}
    models = [_model(exp, "source", out / "source", exp.source, say, progress)]
    for arm in arms:
        d = out / "arms" / arm.name
        models.append(_model(exp, arm.name, d, d / "run", say, progress, arm=arm))
    report = build_report(exp, models)
    write_report(out, report)
    if console is not None:
        print_report(report, console)
    return report


def _upgrade(exp: Experiment, arm: Arm, d: Path, say, progress: bool) -> None:
    from .surgery.pipeline import upgrade

    d.mkdir(parents=True, exist_ok=True)
    if not (d / "arm.json").is_file():
        write_json(d / "arm.json", {"encoder": str(arm.spec)})
    run = d / "run"
    if run.exists() and not (run / "recipe.yaml").is_file():  # killed before training began: nothing to keep
        shutil.rmtree(run)
    if (d / "upgraded").is_dir():  # written atomically: it exists only when complete
        return
    say(f"{arm.name}: upgrade ({arm.spec})")
    t0 = time.perf_counter()
    try:
        upgrade(exp.source, str(arm.spec), d / "upgraded", progress=progress)
    except VlmSwapError as exc:
        raise VlmSwapError(f"arm {arm.name} ({arm.spec}): {exc}") from exc
    add_upgrade_time(d, time.perf_counter() - t0)


def _train(exp: Experiment, arm: Arm, d: Path, say, console, progress: bool) -> None:
    from .train.run import train

    run = d / "run"
    if (run / RUN_SUMMARY_NAME).is_file():  # finished earlier
        return
    resume = (run / "recipe.yaml").is_file()
    say(f"{arm.name}: {'resume' if resume else 'train'} ({exp.recipe})")
    train(
        exp.recipe,
        d / "upgraded",
        exp.data,
        run,
        images=exp.images,
        overrides=exp.overrides,
        resume=resume,
        console=console,
        progress=progress,
        callbacks=[ArmClock(d)],
    )


def _model(exp: Experiment, name: str, d: Path, path, say, progress: bool, arm: Arm | None = None) -> dict:
    """One model's scores (computed once, then read back), timings and run facts, for the report."""
    from .api import load_any
    from .evaluation import score

    d.mkdir(parents=True, exist_ok=True)
    if not (d / SCORES_NAME).is_file():
        say(f"{name}: score")
        t0 = time.perf_counter()
        model, processor = load_any(path)
        eval_images = Path(exp.eval_images) if exp.eval_images else None
        text = Path(exp.text_data) if exp.text_data else None
        result = score(
            model, processor, Path(exp.eval_data), eval_images, text, per_row=True, progress=progress, label=name
        )
        del model
        write_json(d / SCORES_NAME, {**result, "eval_s": time.perf_counter() - t0})
    entry = {"name": name, "path": str(path), "scores": read_json(d / SCORES_NAME)}
    if exp.lmms_tasks:
        lmms = read_json(d / LMMS_NAME) if (d / LMMS_NAME).is_file() else {}
        if lmms.get("tasks") != exp.lmms_tasks:
            from .integrations.lmms_eval.scores import run_tasks

            say(f"{name}: lmms-eval ({', '.join(exp.lmms_tasks)})")
            lmms = {"tasks": exp.lmms_tasks, "scores": run_tasks(str(path), exp.lmms_tasks)}
            write_json(d / LMMS_NAME, lmms)
        entry["lmms"] = lmms["scores"]
    if arm is not None:
        entry.update(
            encoder=str(arm.spec),
            upgraded=str(d / "upgraded"),
            clock=read_clock(d),
            run_summary=read_json(Path(path) / RUN_SUMMARY_NAME),
        )
    return entry


def compare(
    source: str,
    arms: list[str] | tuple[str, ...],
    recipe: str,
    data: str | Path,
    eval_data: str | Path,
    out: str | Path,
    *,
    console=None,
    progress: bool = True,
    **options,
) -> dict[str, Any]:
    """``vlm-swap compare``: ``options`` are those of ``plan`` (images, eval_images, text_data, overrides,
    lmms_tasks). Returns the report (also written under ``out``)."""
    exp, specs = plan(source, arms, recipe, data, eval_data, **options)
    out = Path(out).expanduser().absolute()
    if _rank() == 0:
        claim(out, exp)
    return run(exp, arm_dirs(out, specs), out, console=console, progress=progress)


EMBEDDED_RECIPE = "tiny-cpu"
EMBEDDED_SCENES = {"train": 5000, "eval": 200, "text": 200}


def compare_embedded(
    out: str | Path,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    scenes: dict[str, int] | None = None,
    console=None,
    progress: bool = True,
) -> dict[str, Any]:
    """``vlm-swap compare --embedded``: the embedded tiny source (llava-hf, CLIP tower) against a CLIP-tower
    arm (its own tower re-aligned with a fresh connector) and the perceiver arm (the tiny Qwen3-VL), offline.

    The inputs (models and data, written once under ``out/inputs``) are the demo's: 5000 training scenes
    and 200 held-out scenes, plus 200 held-out text-only rows of the world told in words (``scenes``
    changes these counts: ``{"train": n, "eval": n, "text": n}``)."""
    out = Path(out).expanduser().absolute()
    inputs = out / "inputs"
    models, data = inputs / "models", inputs / "data"
    exp, specs = plan(
        str(models / "tiny-llava"),
        [f"perceiver:{models / 'tiny-qwen3-vl'}", f"hf-vit:{models / 'tiny-clip'}"],
        EMBEDDED_RECIPE,
        data / "train" / "data.json",
        data / "eval" / "data.json",
        images=data / "train",
        eval_images=data / "eval",
        text_data=data / "text" / "data.json",
        overrides=overrides,
        check_files=False,
    )
    claim(out, exp)
    if not inputs.is_dir():
        _write_embedded_inputs(inputs, {**EMBEDDED_SCENES, **(scenes or {})}, console)
    return run(exp, arm_dirs(out, specs), out, console=console, progress=progress)


def _write_embedded_inputs(inputs: Path, scenes: dict[str, int], console) -> None:
    from .zoo import build_comparison

    if console is not None:
        console.rule("[bold]embedded models and data")
    with atomic_dir(inputs, ours=True) as tmp:
        build_comparison(tmp, scenes)
