"""The README matches the code: every option the tour and the synopses use exists, the synopses name
every option of their command, the tour's offline examples run offline, and every test the guarantees
table names exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from vlm_swap.cli import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")


def options(command: str) -> set[str]:
    params = typer.main.get_command(app).commands[command].params
    return {o for p in params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")} - {"--help"}


def tour() -> list[str]:
    block = README.split("## CLI tour", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.startswith("vlm-swap ")]


def test_the_tour_uses_only_options_that_exist():
    lines = tour()
    assert len(lines) > 15
    for line in lines:
        command = line.split()[1]
        unknown = set(FLAG.findall(line)) - options(command)
        assert not unknown, f"{line}: {sorted(unknown)}"


@pytest.mark.parametrize("command", ["upgrade", "export"])
def test_the_synopsis_names_every_option(command):
    synopsis = re.search(rf"`vlm-swap {command} [A-Z][^`]*`", README)
    assert synopsis, f"no synopsis of {command}"
    named = set(FLAG.findall(synopsis.group(0)))
    assert named == {o for o in options(command) if not o.startswith("--no-")}, synopsis.group(0)


def test_the_tour_inspects_catalog_ids_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ids = [line.split()[2] for line in tour() if line.startswith("vlm-swap inspect ") and "/" not in line.split()[2]]
    assert "llava-1.5-7b-hf" in ids
    for source in ids:
        result = CliRunner().invoke(app, ["inspect", source, "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["total_params"] > 10**9


def test_every_test_the_readme_names_exists():
    root = Path(__file__).resolve().parents[1]
    named, current = [], None
    for m in re.finditer(r"`(tests/test_\w+\.py)?(?:::(\w+))?`", README):
        current = m.group(1) or current
        if current:
            named.append((current, m.group(2)))
    assert len(named) > 30
    for path, name in named:
        text = (root / path).read_text()
        assert name is None or f"def {name}(" in text, f"{path}::{name} is named in README.md but does not exist"
