"""``upgrade``, ``build``, ``generate``, ``merge`` and ``export``: the commands that write or run a model."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from .app import (
    ConnectorOpt,
    DType,
    DTypeOpt,
    EncoderOpt,
    EncoderRevisionOpt,
    ForceOpt,
    OutOpt,
    PickleOpt,
    RemoteCodeOpt,
    RevisionOpt,
    SeedOpt,
    command,
    out,
    user_errors,
    warn_remote_code,
    written,
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
    from ..surgery.pipeline import upgrade as run

    loading = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
    loading |= {"revision": revision, "encoder_revision": encoder_revision}
    path = _assemble(run, source, encoder, out_dir, connector, dtype, force, seed, loading)
    written("upgraded model written to", path)


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
    from ..surgery.pipeline import build as run

    loading = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
    loading |= {"revision": revision, "encoder_revision": encoder_revision}
    path = _assemble(run, llm, encoder, out_dir, connector, dtype, force, seed, loading)
    written("model written to", path)


def _assemble(run, source, encoder, out_dir, connector, dtype, force, seed, loading: dict) -> Path:
    """upgrade/build share their options and their call; ``loading``: remote code, pickle, revisions."""
    warn_remote_code(loading["trust_remote_code"], loading["revision"], loading["encoder_revision"])
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


@command()
def generate(
    model: str = typer.Argument(..., metavar="MODEL", help="An upgraded model directory."),
    image: list[Path] = typer.Option(..., "--image", help="Image file (repeat for several images)."),
    prompt: str = typer.Option(..., "--prompt", help="The question or instruction."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, help="Most tokens to generate."),
    allow_pickle: PickleOpt = False,
) -> None:
    """Answer PROMPT about IMAGE, streaming the answer."""
    from ..generation import generate_answer

    with user_errors():
        pieces = generate_answer(
            model, [str(p) for p in image], prompt, max_new_tokens=max_new_tokens, allow_pickle=allow_pickle
        )
        for piece in pieces:
            out.print(piece, end="", highlight=False, markup=False)
    out.print()


@command()
def merge(
    run: Path = typer.Argument(..., metavar="RUN", help="A run directory holding a LoRA adapter."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Where to write the merged model."),
    force: bool = typer.Option(False, "--force/--no-force", help="Replace a non-empty --out."),
    allow_pickle: PickleOpt = False,
) -> None:
    """Fold a run's LoRA adapter (and trained connector) into a full upgraded model."""
    from ..train.run import merge as run_merge

    with user_errors():
        path = run_merge(run, out_dir, force=force, allow_pickle=allow_pickle)
    written("merged model written to", path)


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
    from ..export import export as run_export

    with user_errors():
        path = run_export(model, fmt.value, out_dir, force=force)
    written(f"{fmt.value} export written to", path)
