"""`vlm-swap compare`: bad arms refused before training, honest numbers, the report, a rerun after a kill.

The tests use the shipped pretrained tiny models and shortened recipes; the full embedded run
(`vlm-swap compare --embedded`) is a benchmark (bench/bench_compare.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from typer.testing import CliRunner

import vlm_swap
from vlm_swap import zoo
from vlm_swap.cli import app
from vlm_swap.compare import compare, compare_embedded
from vlm_swap.compare_report import image_outcomes
from vlm_swap.integrations.lmms_eval.runner import Runner
from vlm_swap.integrations.lmms_eval.scores import task_metrics
from vlm_swap.zoo.models import save_vision_tower

from .helpers import cli_command

SHORT = [  # tiny-cpu, a few steps
    "stages.align.steps=4",
    "stages.lora.steps=4",
    "stages.align.batch_size=4",
    "stages.lora.batch_size=4",
    "stages.align.save_steps=2",
    "stages.lora.save_steps=2",
    "stages.align.logging_steps=1",
    "stages.lora.logging_steps=1",
]
FROZEN_LLM = [*SHORT, "stages.lora.llm.mode=frozen"]  # both stages train the connector only
LONGER_ALIGN = [*SHORT, "stages.align.steps=12"]  # time to kill stage 1 after its first checkpoint


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The shipped models, the source's own CLIP tower on its own, and small data files."""
    root = tmp_path_factory.mktemp("compare")
    models = zoo.build_default(root / "models")
    models["clip"] = save_vision_tower(models["source"], root / "models" / "tiny-clip")
    models["train"] = zoo.write_dataset(root / "train", 16, seed=1)
    models["eval"] = zoo.write_dataset(root / "eval", 24, seed=2)
    models["text"] = zoo.write_dataset(root / "text", 24, seed=3, words=True)
    return models


def _args(world, out, *arms, overrides=SHORT):
    arm_flags = [a for arm in arms for a in ("--arm", arm)]
    data = ["--data", str(world["train"]), "--images", str(world["train"].parent)]
    data += ["--eval-data", str(world["eval"]), "--eval-images", str(world["eval"].parent)]
    data += ["--text-data", str(world["text"])]
    settings = [a for s in overrides for a in ("--set", s)]
    return ["compare", str(world["source"]), *arm_flags, "--recipe", "tiny-cpu", *data, *settings, "--out", str(out)]


def _one_line_error(result, *needles):
    assert result.exit_code != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for needle in needles:
        assert needle in lines[0], result.output


def test_bad_arms_are_refused_in_one_line_before_any_training(tmp_path, world):
    runner = CliRunner()
    vit = f"hf-vit:{world['clip']}"
    bad_kind = runner.invoke(app, _args(world, tmp_path / "a", vit, "percever:x"))
    _one_line_error(bad_kind, "percever:x", "perceiver")  # the closest kind is named
    _one_line_error(runner.invoke(app, _args(world, tmp_path / "b", "qwen3-vl-2b")), "KIND:SOURCE")
    _one_line_error(runner.invoke(app, _args(world, tmp_path / "c", vit, vit)), "given twice")
    _one_line_error(runner.invoke(app, [*_args(world, tmp_path / "d", vit), "--lmms-tasks", "mme"]), "lmms-eval")
    assert not any((tmp_path / d).exists() for d in "abcd")  # refused before anything was written

    # a source whose LLM context cannot hold the perceiver's image rows (16 + 2 >= 17): an incompatible pair
    small = tmp_path / "small-context"
    shutil.copytree(world["source"], small)
    config = json.loads((small / "config.json").read_text())
    config["text_config"]["max_position_embeddings"] = 17
    (small / "config.json").write_text(json.dumps(config))
    args = _args(world, tmp_path / "e", vit, f"perceiver:{world['perceiver']}")
    args[1] = str(small)
    _one_line_error(runner.invoke(app, args), "incompatible pair", "token budget", "perceiver-tiny-qwen3-vl")
    assert (tmp_path / "e" / "arms" / "hf-vit-tiny-clip" / "upgraded").is_dir()  # the good arm is kept
    assert not list((tmp_path / "e").rglob("run"))  # nothing was trained


def test_embedded_comparison_reports_the_models_own_numbers(tmp_path):
    out = tmp_path / "cmp"
    report = compare_embedded(out, overrides=FROZEN_LLM, scenes={"train": 16, "eval": 30, "text": 30}, progress=False)
    inputs = out / "inputs"
    source, *arms = report["models"]
    assert [m["name"] for m in arms] == ["perceiver-tiny-qwen3-vl", "hf-vit-tiny-clip"]

    # the source's numbers are `vlm-swap eval`'s on the same rows
    ev = CliRunner().invoke(
        app,
        [
            "eval",
            str(inputs / "models" / "tiny-llava"),
            "--data",
            str(inputs / "data" / "eval" / "data.json"),
            "--images",
            str(inputs / "data" / "eval"),
            "--text-data",
            str(inputs / "data" / "text" / "data.json"),
            "--json",
        ],
    )
    assert ev.exit_code == 0, ev.output
    cli = json.loads(ev.output)["model"]
    assert source["image"]["accuracy"] == cli["accuracy"] and source["image"]["n"] == cli["n"] == 30
    assert source["text"]["accuracy"] == cli["text"]["accuracy"] and source["text"]["n"] == 30
    assert source["text"]["accuracy"] >= 0.8  # the source LLM has learned the text-only task

    for arm in arms:
        # the LLM weights are unchanged (connector-only stages): the text answers are the source's
        assert arm["text"]["accuracy"] == source["text"]["accuracy"]
        assert arm["forgetting"]["value"] == 0.0 and arm["forgetting"]["ci95"] == [0.0, 0.0]
        scores = json.loads((out / "arms" / arm["name"] / "scores.json").read_text())
        assert arm["image"]["accuracy"] == pytest.approx(np.mean(image_outcomes(scores)))
        lo, hi = arm["image"]["ci95"]
        assert lo <= arm["image"]["accuracy"] <= hi and hi - lo > 0
        model, _ = vlm_swap.load(arm["path"])  # an ordinary run directory
        connector = sum(p.numel() for p in model.connector.parameters())
        assert arm["trainable_params"] == {"align": connector, "lora": connector}
        assert arm["wall_s"]["train"] > 0 and arm["wall_s"]["upgrade"] > 0
    assert report["forgetting_reduction"] == [
        {"arm": "perceiver-tiny-qwen3-vl", "against": "hf-vit-tiny-clip", "value": None, "ci95": None}
    ]
    assert any("did not forget" in f for f in report["findings"])

    md = (out / "report.md").read_text()
    assert "| model | image acc. [95% CI]" in md and "hf-vit-tiny-clip" in md
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob(".*.tmp-*"))  # every report file was renamed into place

    # a rerun of a finished comparison keeps everything and only rewrites the report
    kept = {p: p.stat().st_mtime_ns for p in out.glob("arms/*/scores.json")}
    again = compare_embedded(out, overrides=FROZEN_LLM, progress=False)
    assert again["models"] == report["models"]
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    refused = CliRunner().invoke(app, ["compare", "--embedded", "--out", str(out), "--set", "stages.align.lr=1e-3"])
    _one_line_error(refused, "holds a comparison with another")


@pytest.mark.slow
def test_a_killed_comparison_resumes_and_keeps_finished_arms(tmp_path, world):
    out = tmp_path / "cmp"
    arms = (f"hf-vit:{world['clip']}", f"perceiver:{world['perceiver']}")
    cmd = [*cli_command(), *_args(world, out, *arms, overrides=LONGER_ALIGN)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    first = out / "arms" / "hf-vit-tiny-clip" / "run" / "run.json"
    marker = out / "arms" / "perceiver-tiny-qwen3-vl" / "run" / "stage-1-align" / "checkpoint-2" / "trainer_state.json"
    deadline = time.time() + 300
    while not marker.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the comparison ended before it could be killed"
    assert first.is_file() and not (out / "report.json").exists()
    finished = {p: p.stat().st_mtime_ns for p in (out / "arms" / "hf-vit-tiny-clip").rglob("*") if p.is_file()}

    report = compare(
        str(world["source"]),
        arms,
        "tiny-cpu",
        world["train"],
        world["eval"],
        out,
        images=world["train"].parent,
        eval_images=world["eval"].parent,
        text_data=world["text"],
        overrides=LONGER_ALIGN,
        progress=False,
    )
    vit, perceiver = report["models"][1:]
    assert not vit["resumed"] and perceiver["resumed"]
    summary = json.loads((out / "arms" / "perceiver-tiny-qwen3-vl" / "run" / "run.json").read_text())
    assert "checkpoint-" in summary["stages"][0]["resumed_from"]  # stage 1 continued, not from scratch
    assert [s["steps"] for s in summary["stages"]] == [12, 4]
    assert [p for p, t in finished.items() if p.stat().st_mtime_ns != t] == []  # the finished arm was kept
    assert perceiver["wall_s"]["train"] > 0


def test_the_lmms_eval_runner_takes_the_untouched_source_too(world, images):
    runner = Runner(str(world["source"]), device="cpu", batch_size=2)
    answers = runner.generate_until(
        ["what color is the shape on the left?"] * 2, [images[:1]] * 2, [{"max_new_tokens": 3}] * 2
    )
    assert len(answers) == 2 and answers[0] == answers[1]
    results = {
        "results": {"mme": {"alias": "mme", "mme_cognition_score,none": 310.5, "mme_cognition_score_stderr,none": 1.2}}
    }
    assert task_metrics(results) == {"mme": {"mme_cognition_score,none": 310.5}}


def _model(name, image, text, encoder=None):
    entry = {"name": name, "path": f"/{name}", "scores": {"correct": image, "text": {"correct": text}}}
    entry["scores"]["text"].update(accuracy=float(np.mean(text)), perplexity=2.0 - np.mean(text))
    if encoder:
        stages = [{"name": "align", "trainable": {"connector": 10, "llm": 0}}]
        entry.update(encoder=encoder, upgraded="", clock={"upgrade_s": 1.0, "stage-1-align": {"end": 2.0}})
        entry["run_summary"] = {"stages": stages, "data_report": {"kept": 16}}
    return entry


def test_forgetting_and_its_reduction_are_computed_from_the_rows():
    from vlm_swap.compare import Experiment
    from vlm_swap.compare_report import build_report, markdown

    exp = Experiment("src", "tiny-cpu", [], {"name": "tiny-cpu"}, "d", None, "e", None, "t")
    ones = [1] * 40
    report = build_report(
        exp,
        [
            _model("source", [1, 0] * 20, ones),
            _model("perceiver-p", [1, 1, 0, 1] * 10, [1] * 30 + [0] * 10, "perceiver:p"),  # forgets 25%
            _model("hf-vit-v", [0, 1, 0, 0] * 10, [1] * 20 + [0] * 20, "hf-vit:v"),  # forgets 50%
        ],
    )
    source, p, v = report["models"]
    assert (source["image"]["accuracy"], p["image"]["accuracy"], v["image"]["accuracy"]) == (0.5, 0.75, 0.25)
    assert (p["forgetting"]["value"], v["forgetting"]["value"]) == (0.25, 0.5)
    (reduction,) = report["forgetting_reduction"]
    assert reduction["value"] == 0.5 and reduction["ci95"][0] <= 0.5 <= reduction["ci95"][1]
    assert p["wall_s"] == {"upgrade": 1.0, "train": 2.0, "total": 3.0} and p["trainable_params"] == {"align": 10}
    assert any(f.startswith("image accuracy: perceiver-p") and "do not overlap" in f for f in report["findings"])
    assert any(f.startswith("forgetting reduction of perceiver-p against hf-vit-v: 50.0%") for f in report["findings"])
    assert "| perceiver-p | 0.750 [" in markdown(report)
