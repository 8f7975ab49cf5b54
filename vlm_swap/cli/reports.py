"""``inspect``, ``list`` and ``pairs``: the commands that report what vlm-swap knows and what a checkpoint is.

They are ``light``: listings, pair checks and catalog models come from data, so these commands import
torch and transformers only to inspect a checkpoint (a local dir or a hub id).
"""

from __future__ import annotations

from enum import Enum

import typer
from rich.markup import escape
from rich.table import Table

from .app import command, err, load_library, out, print_json, user_errors, warn_remote_code


class Listing(str, Enum):
    encoders = "encoders"
    connectors = "connectors"
    llms = "llms"
    sources = "sources"
    catalog = "catalog"
    recipes = "recipes"


@command("inspect", light=True)
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
    from ..inspection import catalog_report, inspect_source

    warn_remote_code(trust_remote_code)
    with user_errors():
        report = catalog_report(source)
        if report is None:  # a checkpoint: built on the meta device
            load_library()
            report = inspect_source(source, trust_remote_code=trust_remote_code)
    if as_json:
        print_json(report)
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


@command("list", light=True)
def list_cmd(
    what: Listing = typer.Argument(..., metavar="WHAT", help="What to list."),
    pattern: str = typer.Option("*", "--filter", help="fnmatch pattern on ids, e.g. 'qwen*'."),
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print JSON for scripts."),
) -> None:
    """List registered encoder kinds, connectors, LLM families, sources or catalog models."""
    from ..listings import listing

    with user_errors():
        rows = listing(what.value, pattern)
    if as_json:
        print_json(rows)
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


@command(light=True)
def pairs(
    encoder: str = typer.Option(None, "--encoder", help="Catalog id of a perceiver or ViT (default: all)."),
    llm: str = typer.Option(None, "--llm", help="Catalog id of an LLM (default: all)."),
    connector: str = typer.Option("mlp2x-relu", "--connector", help="Connector used for the size check."),
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print JSON for scripts."),
) -> None:
    """List encoder/LLM pairs with the checks that decide whether they fit, and why."""
    from ..listings import pair_table

    with user_errors():
        rows = pair_table(encoder, llm, connector)
    if as_json:
        print_json(rows)
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
