"""The ``vlm-swap`` typer app and what its commands share: the command decorator, consoles, options,
user-error handling, and the library import that the commands which build or run models wait for.

Errors caused by the input (``VlmSwapError``) print one line to stderr and exit non-zero; pass
``--debug`` for the traceback. ``--help``, ``list``, ``pairs`` and ``inspect`` of a catalog model
import neither torch nor transformers: every other command imports them (``load_library``) once its
arguments are parsed, so its ``--help`` is as quick.
"""

from __future__ import annotations

import contextlib
import functools
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
from typer.core import TyperCommand

from ..errors import VlmSwapError

app = typer.Typer(add_completion=False, no_args_is_help=True)  # its help is _main's docstring


class _Command(TyperCommand):
    """Usage lines name the arguments as click does (``vlm-swap upgrade [OPTIONS] SOURCE``), without braces."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        return [piece.strip("{}") for piece in super().collect_usage_pieces(ctx)]


def command(*args, light: bool = False, **kwargs):
    """``app.command`` with the usage lines of ``_Command``; unless ``light``, the command first waits for
    ``load_library`` (after parsing: its ``--help`` imports nothing)."""

    def register(fn):
        return app.command(*args, cls=_Command, **kwargs)(fn if light else _after_load_library(fn))

    return register


def _after_load_library(fn):
    @functools.wraps(fn)  # typer reads the parameters of the wrapped function
    def run(*args, **kwargs):
        load_library()
        return fn(*args, **kwargs)

    return run


out = Console()
err = Console(stderr=True)
_state = {"debug": False, "freeze": False}


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

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
    _state["debug"] = debug


def load_library() -> None:
    """Import torch, transformers and vlm_swap's model format (as ``import vlm_swap`` does outside this
    command), quiet the libraries and set torch's CPU threads."""
    import vlm_swap

    vlm_swap.import_library()
    from ..threads import use_cpu_threads

    _quiet_libraries()
    threads = use_cpu_threads()  # torch's default oversubscribes a shared machine
    if _state["debug"]:
        err.print(f"torch CPU threads: {threads}", markup=False, highlight=False, soft_wrap=True)
    if _state["freeze"]:
        # The objects of the libraries imported so far (torch, transformers: millions) live as long as the
        # process; freezing them keeps every later garbage collection from walking them again. Without it
        # the collections that loading a model triggers take about a third of `upgrade`'s time, and the
        # final one a second of every command's exit. (Only the console script does this: a program that
        # imports vlm_swap keeps its own collector as it is.)
        gc.freeze()


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


def written(what: str, path: Path, extra: str = "") -> None:
    """``what PATH``: the path as typed (never read as markup) on one line, so it can be copied."""
    out.print(f"{what} [bold]{escape(str(path))}[/]{escape(extra)}", soft_wrap=True)


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def warn_remote_code(trust_remote_code: bool, *revisions: str | None) -> None:
    if trust_remote_code:
        pinned = escape("pinned to " + ", ".join(r for r in revisions if r) if any(revisions) else "unpinned")
        err.print(
            f"[yellow]warning:[/] --trust-remote-code runs Python code shipped with the checkpoint ({pinned}); "
            "pin audited code with --revision COMMIT",
            highlight=False,
            soft_wrap=True,
        )


class DType(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


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


def main() -> None:
    _state["freeze"] = True  # the console script's process: see load_library
    app()
