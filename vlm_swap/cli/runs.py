"""``train``, ``eval``, ``compare`` and ``demo``: the commands that fine-tune and score models."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..errors import VlmSwapError
from .app import AbsolutePathsOpt, PickleOpt, SkipBadRowsOpt, command, out, print_json, user_errors, written


@command()
def train(
    recipe: str = typer.Argument(
        ..., metavar="RECIPE", help="A shipped recipe name (vlm-swap list recipes) or a YAML file."
    ),
    model: str = typer.Option(..., "--model", help="The upgraded model directory to fine-tune."),
    data: Path = typer.Option(..., "--data", help="LLaVA JSON/JSONL or messages JSONL."),
    images: Path = typer.Option(None, "--images", help="Folder the data's image paths are relative to."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run directory (checkpoints, adapter, loss.png)."),
    resume: bool = typer.Option(False, "--resume/--no-resume", help="Continue from the newest complete checkpoint."),
    overrides: list[str] = typer.Option([], "--set", help="Override a recipe field: key.path=value (repeatable)."),
    skip_bad_rows: SkipBadRowsOpt = False,
    max_images: int = typer.Option(1, "--max-images", min=1, help="Most images allowed in one sample."),
    report_to: str = typer.Option("none", "--report-to", help="Trainer loggers: none, tensorboard, wandb, ..."),
    allow_pickle: PickleOpt = False,
    allow_absolute_paths: AbsolutePathsOpt = False,
) -> None:
    """Fine-tune the connector (then LoRA) of an upgraded model with a recipe, on the HF Trainer."""
    from ..train.run import RECIPE_NAME
    from ..train.run import train as run

    def on_interrupt() -> str:
        if (out_dir / RECIPE_NAME).is_file():
            return "interrupted; continue from the newest complete checkpoint: the same command with --resume"
        return "interrupted before the run started; nothing was written"

    with user_errors(on_interrupt):
        path = run(
            recipe,
            model,
            data,
            out_dir,
            images=images,
            overrides=overrides,
            resume=resume,
            on_bad_rows="skip" if skip_bad_rows else "fail",
            max_images=max_images,
            report_to=report_to,
            console=out,
            allow_pickle=allow_pickle,
            allow_absolute_paths=allow_absolute_paths,
        )
    written("run written to", path, f" (loss curve: {path / 'loss.png'})")


@command("eval")
def eval_cmd(
    model: str = typer.Argument(
        ..., metavar="MODEL", help="An upgraded model, a training run, or any image-text model."
    ),
    data: Path = typer.Option(None, "--data", help="Image questions (LLaVA JSON/JSONL or messages JSONL)."),
    images: Path = typer.Option(None, "--images", help="Folder the data's image paths are relative to."),
    text_data: Path = typer.Option(None, "--text-data", help="Text-only rows: perplexity of their answers."),
    baseline: str = typer.Option(None, "--baseline", help="A model to compare with (e.g. the source VLM)."),
    limit: int = typer.Option(None, "--limit", min=1, help="Score at most N rows of each file."),
    report: Path = typer.Option(None, "--out", "-o", help="Write the scores as JSON to this file."),
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print JSON instead of a table."),
    skip_bad_rows: SkipBadRowsOpt = False,
    allow_pickle: PickleOpt = False,
    allow_absolute_paths: AbsolutePathsOpt = False,
) -> None:
    """Accuracy on image questions and text perplexity, against a baseline when given."""
    from ..evaluation import evaluate

    with user_errors():
        if data is None and text_data is None:
            raise VlmSwapError("nothing to evaluate: pass --data and/or --text-data")
        result = evaluate(
            model,
            data,
            images,
            text_data,
            baseline=baseline,
            limit=limit,
            report=report,
            progress=not as_json,
            allow_pickle=allow_pickle,
            allow_absolute_paths=allow_absolute_paths,
            on_bad_rows="skip" if skip_bad_rows else "fail",
        )
    if as_json:
        print_json(result)
        return
    _print_scores(result)


def _print_scores(result: dict) -> None:
    from ..evaluation import flat_scores

    columns = [k for k in ("baseline", "model") if k in result]
    table = Table("metric", *columns, title="evaluation")
    rows = {name: flat_scores(result[name]) for name in columns}
    for metric in dict.fromkeys(m for r in rows.values() for m in r):
        table.add_row(metric, *(f"{rows[c][metric]:.4g}" if metric in rows[c] else "-" for c in columns))
    out.print(table)


@command()
def compare(
    source: str = typer.Argument(None, help="The VLM every arm is upgraded from (not with --embedded)."),
    arms: list[str] = typer.Option([], "--arm", help="An encoder spec KIND:SOURCE to upgrade with (repeat per arm)."),
    recipe: str = typer.Option(None, "--recipe", help="The recipe every arm is trained with (name or YAML)."),
    data: Path = typer.Option(None, "--data", help="Training data (LLaVA JSON/JSONL or messages JSONL)."),
    images: Path = typer.Option(None, "--images", help="Folder the training data's image paths are relative to."),
    eval_data: Path = typer.Option(None, "--eval-data", help="Image questions every model is scored on."),
    eval_images: Path = typer.Option(
        None, "--eval-images", help="Folder of the eval data's images (default --images)."
    ),
    text_data: Path = typer.Option(None, "--text-data", help="Text-only questions: text ability and forgetting."),
    lmms_tasks: str = typer.Option(None, "--lmms-tasks", help="lmms-eval tasks (a,b) to run on every model."),
    overrides: list[str] = typer.Option([], "--set", help="Override a recipe field: key.path=value (repeatable)."),
    out_dir: Path = typer.Option(Path("vlm-swap-compare"), "--out", "-o", help="The comparison directory."),
    embedded: bool = typer.Option(
        False, "--embedded/--no-embedded", help="The whole A/B offline on the embedded tiny models."
    ),
) -> None:
    """Upgrade SOURCE with every --arm, train each alike, score them and the source on the same rows.

    Writes report.json, report.md and compare.png under --out; a rerun continues where it stopped.
    --embedded: the tiny source, a CLIP-tower arm and the perceiver arm, offline (the demo's training twice).
    """
    from ..compare import compare as run_compare
    from ..compare import compare_embedded

    with user_errors():
        if embedded:
            if source or arms or recipe or data or eval_data or text_data or lmms_tasks:
                raise VlmSwapError("--embedded brings its own source, arms, recipe and data; pass only --out and --set")
            report = compare_embedded(out_dir, overrides=overrides, console=out)
        else:
            for flag, value in (("SOURCE", source), ("--recipe", recipe), ("--data", data), ("--eval-data", eval_data)):
                if not value:
                    raise VlmSwapError(f"compare needs {flag} (or --embedded for the embedded tiny models)")
            tasks = [t.strip() for t in (lmms_tasks or "").split(",") if t.strip()]
            report = run_compare(
                source,
                arms,
                recipe,
                data,
                eval_data,
                out_dir,
                console=out,
                images=images,
                eval_images=eval_images,
                text_data=text_data,
                overrides=overrides,
                lmms_tasks=tasks,
            )
    if report:  # the main process (the others only train)
        written("report written to", out_dir / "report.md", " (also report.json, compare.png)")


@command()
def demo(
    out_dir: Path = typer.Option(Path("vlm-swap-demo"), "--out", "-o", help="Where the demo writes its models."),
) -> None:
    """Inspect, pair, upgrade, evaluate, align (tiny-cpu), evaluate and generate on the embedded tiny models.

    Offline; about 2 minutes on two CPU cores.
    """
    from ..demo import run_demo

    with user_errors():
        run_demo(out_dir, out)
