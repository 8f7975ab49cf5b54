"""An output never destroys an input: `--out` may not be, contain or lie inside an input, and `--force`
replaces only a directory that vlm-swap wrote (it holds a provenance file), for every command that writes."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from vlm_swap.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _snapshot(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _refused(result, *fragments):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    for frag in fragments:
        assert frag in text, text


@pytest.fixture
def parent_with_source(tmp_path, llava):
    """``par/src`` (a llava source) next to a file of the user's, as in the reported data loss."""
    par = tmp_path / "par"
    par.mkdir()
    shutil.copytree(llava("llama2", "clip"), par / "src")
    (par / "notes.txt").write_text("mine")
    return par


def test_upgrade_into_the_parent_of_its_source_is_refused_and_loses_nothing(parent_with_source, vit):
    before = _snapshot(parent_with_source)
    result = run("upgrade", parent_with_source / "src", "--encoder", f"hf-vit:{vit('clip')}",
                 "--out", parent_with_source, "--force")  # fmt: skip
    _refused(result, "contains the input")
    assert _snapshot(parent_with_source) == before
    assert (parent_with_source / "notes.txt").read_text() == "mine"


def test_upgrade_into_its_source_or_inside_it_is_refused(parent_with_source, vit):
    src = parent_with_source / "src"
    before = _snapshot(src)
    for out, what in ((src, "is the input"), (src / "sub", "lies inside the input")):
        result = run("upgrade", src, "--encoder", f"hf-vit:{vit('clip')}", "--out", out, "--force")
        _refused(result, what)
    enc = parent_with_source / "enc"
    shutil.copytree(vit("clip"), enc)
    _refused(run("upgrade", src, "--encoder", f"hf-vit:{enc}", "--out", enc, "--force"), "is the input")
    assert _snapshot(src) == before


def test_out_dot_with_force_is_refused(tmp_path, llava, vit, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "data.json").write_text("[]")
    monkeypatch.chdir(work)
    result = run("upgrade", llava("llama2", "clip"), "--encoder", f"hf-vit:{vit('clip')}", "--out", ".", "--force")
    _refused(result, "current directory")
    assert (work / "data.json").read_text() == "[]"


def test_force_replaces_only_a_vlm_swap_output(tmp_path, llava, vit):
    src, enc = llava("llama2", "clip"), f"hf-vit:{vit('clip')}"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    _refused(run("upgrade", src, "--encoder", enc, "--out", foreign, "--force"), "not a vlm-swap output")
    assert (foreign / "thesis.tex").read_text() == "years of work"

    ours = tmp_path / "ours"
    assert run("upgrade", src, "--encoder", enc, "--out", ours).exit_code == 0
    (ours / "stale.txt").write_text("from before")
    result = run("upgrade", src, "--encoder", enc, "--out", ours, "--force")
    assert result.exit_code == 0, result.output
    assert not (ours / "stale.txt").exists() and (ours / "vlm_swap.json").is_file()


def test_export_and_merge_refuse_their_input_and_foreign_directories(tmp_path, llava, vit):
    up = tmp_path / "up"
    assert run("upgrade", llava("llama2", "clip"), "--encoder", f"hf-vit:{vit('clip')}", "--out", up).exit_code == 0
    before = _snapshot(up)
    for fmt in ("llava", "remote-code"):
        _refused(run("export", up, "--format", fmt, "--out", up, "--force"), "is the input")
        _refused(run("export", up, "--format", fmt, "--out", tmp_path, "--force"), "contains the input")
    assert _snapshot(up) == before
    # an export is itself a vlm-swap output: it can be replaced with --force
    exported = tmp_path / "exported"
    for _ in range(2):
        result = run("export", up, "--format", "llava", "--out", exported, "--force")
        assert result.exit_code == 0, result.output
    assert json.loads((exported / "vlm_swap.json").read_text())["export"]["format"] == "llava"

    fake_run = tmp_path / "run"
    fake_run.mkdir()
    (fake_run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(up)}))
    _refused(run("merge", fake_run, "--out", fake_run, "--force"), "is the input")
    _refused(run("merge", fake_run, "--out", up, "--force"), "is the input")
    assert (fake_run / "adapter_config.json").is_file() and _snapshot(up) == before


def test_build_refuses_to_write_over_its_llm(tmp_path, bare_llm, vit):
    llm = tmp_path / "llm"
    shutil.copytree(bare_llm("qwen3"), llm)
    before = _snapshot(llm)
    _refused(run("build", "--llm", llm, "--encoder", f"hf-vit:{vit('clip')}", "--out", llm, "--force"), "is the input")
    assert _snapshot(llm) == before


def test_eval_out_refuses_inputs_and_foreign_files(tmp_path, llava):
    src = llava("llama2", "clip")
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"id": "1", "conversations": [{"from": "human", "value": "hi"},
                                                             {"from": "gpt", "value": "yo"}]}) + "\n")  # fmt: skip
    original = data.read_text()
    _refused(run("eval", src, "--text-data", data, "--out", data), "is the input")
    assert data.read_text() == original
    _refused(run("eval", src, "--text-data", data, "--out", src / "scores.json"), "lies inside the input")
    foreign = tmp_path / "budget.json"
    foreign.write_text('{"q1": 10}')
    _refused(run("eval", src, "--text-data", data, "--out", foreign), "not a vlm-swap eval report")
    assert foreign.read_text() == '{"q1": 10}'


def test_train_refuses_a_run_directory_that_is_its_model_or_data(tmp_path, llava, vit):
    up = tmp_path / "up"
    assert run("upgrade", llava("llama2", "clip"), "--encoder", f"hf-vit:{vit('clip')}", "--out", up).exit_code == 0
    data = tmp_path / "rows"
    data.mkdir()
    (data / "d.jsonl").write_text("")
    before = _snapshot(up)
    _refused(run("train", "tiny-cpu", "--model", up, "--data", data / "d.jsonl", "--out", up), "is the input")
    _refused(run("train", "tiny-cpu", "--model", up, "--data", data / "d.jsonl", "--out", data), "contains the input")
    assert _snapshot(up) == before
