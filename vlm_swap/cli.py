"""The ``vlm-swap`` command line: each command parses, calls one library function, prints.

Errors caused by the input (``VlmSwapError``) print one line to stderr and exit non-zero; pass
``--debug`` for the traceback.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperCommand

from .errors import VlmSwapError

app = typer.Typer(add_completion=False, no_args_is_help=True)  # its help is _main's docstring


class _Command(TyperCommand):
    """Usage lines name the arguments as click does (``vlm-swap upgrade [OPTIONS] SOURCE``), without braces."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        return [piece.strip("{}") for piece in super().collect_usage_pieces(ctx)]


def command(*args, **kwargs):
    """``app.command`` with the usage lines of ``_Command``."""
    return app.command(*args, cls=_Command, **kwargs)


out = Console()
err = Console(stderr=True)
_state = {"debug": False}


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        out.print(f"vlm-swap {__version__}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug/--no-debug", help="Show tracebacks on errors."),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Upgrade LLaVA-style VLMs: swap the vision side for a small-VLM perceiver or a ViT, keep the LLM."""
    from .threads import use_cpu_threads

    _state["debug"] = debug
    _quiet_libraries()
    threads = use_cpu_threads()  # torch's default oversubscribes a shared machine
    if debug:
        err.print(f"torch CPU threads: {threads}", markup=False, highlight=False, soft_wrap=True)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@contextlib.contextmanager
def user_errors(on_interrupt=lambda: "interrupted; outputs left as they were"):
    """Turn user-caused errors into one line on stderr and a non-zero exit; ``on_interrupt()`` gives the line
    printed on Ctrl-C (what the user can do next)."""
    try:
        yield
    except VlmSwapError as exc:
        if _state["debug"]:
            raise
        # the message is text: a spec such as perceiver:x must not turn into an emoji, nor [..] into markup
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True, emoji=False)
        raise typer.Exit(exc.exit_code) from None
    except OSError as exc:  # the system refused a read or write the checks above could not foresee
        if _state["debug"]:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        err.print(f"[bold red]error:[/] {escape(f'{exc.strerror or exc}{where}')}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print(escape(on_interrupt()), highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None


def _written(what: str, path: Path, extra: str = "") -> None:
    """``what PATH``: the path as typed (never read as markup) on one line, so it can be copied."""
    out.print(f"{what} [bold]{escape(str(path))}[/]{escape(extra)}", soft_wrap=True)


def _print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


class Listing(str, Enum):
    encoders = "encoders"
    connectors = "connectors"
    llms = "llms"
    sources = "sources"
    catalog = "catalog"
    recipes = "recipes"


class DType(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@command("inspect")
def inspect_cmd(
    source: str = typer.Argument(
        ..., metavar="SOURCE", help="A VLM: local dir (a config.json alone is enough), hub id or catalog id."
    ),
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print JSON for scripts."),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code/--no-trust-remote-code", help="Allow model code from the checkpoint."
    ),
) -> None:
    """Report a checkpoint's architecture, parts, image token, tokens per image and parameter counts."""
    from .inspection import inspect_source

    _warn_remote_code(trust_remote_code)
    with user_errors():
        report = inspect_source(source, trust_remote_code=trust_remote_code)
    if as_json:
        _print_json(report)
        return
    where = escape(f"({report['source_kind']}) at {report['path']}  [{report['weights']}]")
    out.print(f"[bold]{escape(report['architecture'])}[/] {where}", soft_wrap=True)
    table = Table("part", "type", "params", "details")
    for name, part in report["parts"].items():
        details = ", ".join(f"{k}={v}" for k, v in part.items() if k not in ("type", "params") and v is not None)
        table.add_row(name, escape(str(part["type"])), f"{part['params']:,}", escape(details))
    out.print(table)
    out.print(
        f"image token: {report['image_token']!r} (id {report['image_token_id']}), "
        f"tokens per image: {report['tokens_per_image']}, total params: {report['total_params']:,}",
        markup=False,
    )


EncoderOpt = Annotated[str, typer.Option("--encoder", "-e", help="KIND:SOURCE, e.g. perceiver:qwen3-vl-2b.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output directory (must be empty unless --force).")]
ConnectorOpt = Annotated[
    str, typer.Option("--connector", help="Connector id (default: mlp2x-relu for perceivers, mlp2x-gelu for ViTs).")
]
DTypeOpt = Annotated[DType, typer.Option("--dtype", help="Output dtype; auto keeps the LLM's (bit-identical).")]
ForceOpt = Annotated[bool, typer.Option("--force/--no-force", help="Replace a non-empty --out.")]
RemoteCodeOpt = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code/--no-trust-remote-code", help="Allow model code from the checkpoint (pin a revision)."
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the fresh connector's initialisation.")]
PickleOpt = Annotated[
    bool,
    typer.Option(
        "--allow-pickle/--no-allow-pickle",
        help="Read pickle weights (.bin, .pt) when there are no safetensors (tensors only, weights_only=True).",
    ),
]
AbsolutePathsOpt = Annotated[
    bool,
    typer.Option(
        "--allow-absolute-paths/--no-allow-absolute-paths",
        help="Let image paths in the data resolve outside --images (absolute paths, '..').",
    ),
]
SkipBadRowsOpt = Annotated[
    bool,
    typer.Option(
        "--skip-bad-rows/--fail-on-bad-rows", help="Skip malformed rows (reported by line) instead of stopping."
    ),
]
RevisionOpt = Annotated[str, typer.Option("--revision", help="Hub source: branch, tag or commit to pin.")]
EncoderRevisionOpt = Annotated[
    str, typer.Option("--encoder-revision", help="Hub encoder source: branch, tag or commit to pin.")
]


def _warn_remote_code(trust_remote_code: bool, *revisions: str | None) -> None:
    if trust_remote_code:
        pinned = escape("pinned to " + ", ".join(r for r in revisions if r) if any(revisions) else "unpinned")
        err.print(
            f"[yellow]warning:[/] --trust-remote-code runs Python code shipped with the checkpoint ({pinned}); "
            "pin audited code with --revision COMMIT",
            highlight=False,
            soft_wrap=True,
        )


@command()
def upgrade(
    source: str = typer.Argument(..., metavar="SOURCE", help="The VLM to upgrade: local dir, hub id or catalog id."),
    encoder: EncoderOpt = ...,
    out_dir: OutOpt = ...,
    connector: ConnectorOpt = None,
    dtype: DTypeOpt = DType.auto,
    force: ForceOpt = False,
    trust_remote_code: RemoteCodeOpt = False,
    allow_pickle: PickleOpt = False,
    revision: RevisionOpt = None,
    encoder_revision: EncoderRevisionOpt = None,
    seed: SeedOpt = 0,
) -> None:
    """Swap the vision side of an existing VLM for ENCODER; keep the LLM, tokenizer and chat template."""
    from .surgery.pipeline import upgrade as run

    loading = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
    loading |= {"revision": revision, "encoder_revision": encoder_revision}
    path = _assemble(run, source, encoder, out_dir, connector, dtype, force, seed, loading)
    _written("upgraded model written to", path)


@command()
def build(
    llm: str = typer.Option(..., "--llm", help="A bare causal LM: local dir, hub id or catalog id."),
    encoder: EncoderOpt = ...,
    out_dir: OutOpt = ...,
    connector: ConnectorOpt = None,
    dtype: DTypeOpt = DType.auto,
    force: ForceOpt = False,
    trust_remote_code: RemoteCodeOpt = False,
    allow_pickle: PickleOpt = False,
    revision: RevisionOpt = None,
    encoder_revision: EncoderRevisionOpt = None,
    seed: SeedOpt = 0,
) -> None:
    """Build a VLM from a bare causal LM and an encoder (the DPA paper's setting)."""
    from .surgery.pipeline import build as run

    loading = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
    loading |= {"revision": revision, "encoder_revision": encoder_revision}
    path = _assemble(run, llm, encoder, out_dir, connector, dtype, force, seed, loading)
    _written("model written to", path)


def _assemble(run, source, encoder, out_dir, connector, dtype, force, seed, loading: dict) -> Path:
    """upgrade/build share their options and their call; ``loading``: remote code, pickle, revisions."""
    _warn_remote_code(loading["trust_remote_code"], loading["revision"], loading["encoder_revision"])
    with user_errors():
        return run(
            source,
            encoder,
            out_dir,
            connector=connector,
            dtype=dtype.value,
            force=force,
            seed=seed,
            progress=True,
            **loading,
        )


@command("list")
def list_cmd(
    what: Listing = typer.Argument(..., metavar="WHAT", help="What to list."),
    pattern: str = typer.Option("*", "--filter", help="fnmatch pattern on ids, e.g. 'qwen*'."),
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print JSON for scripts."),
) -> None:
    """List registered encoder kinds, connectors, LLM families, sources or catalog models."""
    from .listings import listing

    with user_errors():
        rows = listing(what.value, pattern)
    if as_json:
        _print_json(rows)
        return
    if not rows:
        err.print(f"no {what.value} match {pattern!r} (vlm-swap list {what.value} lists them all)", markup=False)
        raise typer.Exit(1)
    fields = sorted({k for r in rows.values() for k in r}, key=lambda k: (k != "help", k))
    # a nested value (a catalog entry's architecture) would fill a column with dozens of lines: --json has it
    columns = [c for c in fields if not any(isinstance(r.get(c), (dict, list)) for r in rows.values())]
    nested = [c for c in fields if c not in columns]
    table = Table(title=what.value, caption=f"{', '.join(nested)}: with --json" if nested else None)
    table.add_column("id", no_wrap=True)
    for c in columns:
        table.add_column(c.replace("_", " "), overflow="fold")
    for id_, row in rows.items():
        table.add_row(escape(id_), *(escape(str(row.get(c, ""))) for c in columns))
    out.print(table)


@command()
def pairs(
    encoder: str = typer.Option(None, "--encoder", help="Catalog id of a perceiver or ViT (default: all)."),
    llm: str = typer.Option(None, "--llm", help="Catalog id of an LLM (default: all)."),
    connector: str = typer.Option("mlp2x-relu", "--connector", help="Connector used for the size check."),
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print JSON for scripts."),
) -> None:
    """List encoder/LLM pairs with the checks that decide whether they fit, and why."""
    from .listings import pair_table

    with user_errors():
        rows = pair_table(encoder, llm, connector)
    if as_json:
        _print_json(rows)
        return
    table = Table("encoder", "llm", "verdict", "reasons", title="pairs")
    colour = {"ok": "green", "warn": "yellow", "fail": "red"}
    for r in rows:
        reasons = "\n".join(
            f"{c['name']}: {c['reason']}"
            for c in r["checks"]
            if c["status"] != "ok" or c["name"] in ("text family", "token budget")
        )
        encoder = f"{r['encoder']} (recommended)" if r.get("recommended") else r["encoder"]
        table.add_row(escape(encoder), escape(r["llm"]), f"[{colour[r['verdict']]}]{r['verdict']}[/]", escape(reasons))
    out.print(table)
    for r in rows:
        if r.get("recommended"):
            out.print(
                f"recommended perceiver for {r['llm']}: {r['encoder']} ({r['why']})", highlight=False, markup=False
            )


@command()
def generate(
    model: str = typer.Argument(..., metavar="MODEL", help="An upgraded model directory."),
    image: list[Path] = typer.Option(..., "--image", help="Image file (repeat for several images)."),
    prompt: str = typer.Option(..., "--prompt", help="The question or instruction."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, help="Most tokens to generate."),
    allow_pickle: PickleOpt = False,
) -> None:
    """Answer PROMPT about IMAGE, streaming the answer."""
    from .generation import generate_answer

    with user_errors():
        pieces = generate_answer(
            model, [str(p) for p in image], prompt, max_new_tokens=max_new_tokens, allow_pickle=allow_pickle
        )
        for piece in pieces:
            out.print(piece, end="", highlight=False, markup=False)
    out.print()


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
    from .train.run import RECIPE_NAME
    from .train.run import train as run

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
    _written("run written to", path, f" (loss curve: {path / 'loss.png'})")


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
    from .evaluation import evaluate

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
        _print_json(result)
        return
    _print_scores(result)


def _print_scores(result: dict) -> None:
    from .evaluation import flat_scores

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
    from .compare import compare as run_compare
    from .compare import compare_embedded

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
        _written("report written to", out_dir / "report.md", " (also report.json, compare.png)")


@command()
def merge(
    run: Path = typer.Argument(..., metavar="RUN", help="A run directory holding a LoRA adapter."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Where to write the merged model."),
    force: bool = typer.Option(False, "--force/--no-force", help="Replace a non-empty --out."),
    allow_pickle: PickleOpt = False,
) -> None:
    """Fold a run's LoRA adapter (and trained connector) into a full upgraded model."""
    from .train.run import merge as run_merge

    with user_errors():
        path = run_merge(run, out_dir, force=force, allow_pickle=allow_pickle)
    _written("merged model written to", path)


class ExportFormat(str, Enum):
    llava = "llava"
    remote_code = "remote-code"


@command()
def export(
    model: Path = typer.Argument(..., metavar="MODEL", help="An upgraded model directory (merge a LoRA run first)."),
    fmt: ExportFormat = typer.Option(..., "--format", help="llava: native llava-hf; remote-code: any encoder."),
    out_dir: OutOpt = ...,
    force: ForceOpt = False,
) -> None:
    """Write MODEL as a checkpoint that loads without vlm-swap (native llava-hf or remote code)."""
    from .export import export as run_export

    with user_errors():
        path = run_export(model, fmt.value, out_dir, force=force)
    _written(f"{fmt.value} export written to", path)


@command()
def demo(
    out_dir: Path = typer.Option(Path("vlm-swap-demo"), "--out", "-o", help="Where the demo writes its models."),
) -> None:
    """Inspect, pair, upgrade, evaluate, align (tiny-cpu), evaluate and generate on the embedded tiny models.

    Offline; about 2 minutes on two CPU cores.
    """
    from .demo import run_demo

    with user_errors():
        run_demo(out_dir, out)


def main() -> None:
    # The objects of the libraries imported so far (torch, transformers: millions) live as long as the
    # process; freezing them keeps every later garbage collection from walking them again. Without it
    # the collections that loading a model triggers take about a third of `upgrade`'s time, and the
    # final one a second of every command's exit. (Only the console script does this: a program that
    # imports vlm_swap keeps its own collector as it is.)
    gc.freeze()
    app()


if __name__ == "__main__":
    main()
