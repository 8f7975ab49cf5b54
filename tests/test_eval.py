"""Evaluation: exact-match and multiple-choice accuracy, text perplexity, baseline comparison."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import vlm_swap
from vlm_swap import zoo
from vlm_swap.cli import app
from vlm_swap.evaluation import evaluate, normalize


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return zoo.build_default(tmp_path_factory.mktemp("pretrained"))


def test_normalize():
    assert normalize("  Red.\nmore") == "red"
    assert normalize("two!") == "two"
    assert normalize("") == ""


def test_pretrained_source_answers_and_a_fresh_upgrade_does_not(tmp_path, pretrained):
    data = zoo.write_dataset(tmp_path / "eval", 60, seed=2)
    up = vlm_swap.upgrade(str(pretrained["source"]), f"perceiver:{pretrained['perceiver']}", tmp_path / "up")
    result = evaluate(str(up), data, data.parent, None, baseline=str(pretrained["source"]))
    assert result["baseline"]["accuracy"] >= 0.6
    assert result["model"]["accuracy"] <= result["baseline"]["accuracy"] - 0.2  # the fresh connector
    assert result["model"]["n"] == 60 and len(result["model"]["examples"]) == 5


def test_multiple_choice_and_text_perplexity_via_cli(tmp_path, pretrained):
    data = zoo.write_dataset(tmp_path / "mc", 20, seed=4)
    rows = json.loads(data.read_text())
    for row in rows:
        answer = row["conversations"][1]["value"]
        row["options"] = sorted({answer, "red", "circle", "two"})
    data.write_text(json.dumps(rows))
    text = tmp_path / "text.jsonl"
    text.write_text(
        "".join(
            json.dumps(
                {"messages": [{"role": "user", "content": f"what color is {c}?"}, {"role": "assistant", "content": c}]}
            )
            + "\n"
            for c in ("red", "green", "blue", "yellow")
        )
    )
    report = tmp_path / "report.json"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            str(pretrained["source"]),
            "--data",
            str(data),
            "--images",
            str(data.parent),
            "--text-data",
            str(text),
            "--out",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.output
    scores = json.loads(report.read_text())["model"]
    assert scores["choice"]["n"] == 20 and 0.0 <= scores["choice"]["accuracy"] <= 1.0
    assert scores["accuracy"] == scores["choice"]["accuracy"]
    assert scores["text"]["tokens"] > 0 and scores["text"]["perplexity"] > 1.0
    assert scores["text"]["n"] == 4 and 0.0 <= scores["text"]["accuracy"] <= 1.0  # exact match of the answers
    assert "text perplexity" in result.output and "text accuracy" in result.output


def test_the_source_answers_questions_about_scenes_told_in_words(tmp_path, pretrained):
    text = zoo.write_dataset(tmp_path / "words", 60, seed=5, words=True)
    rows = json.loads(text.read_text())
    assert all("image" not in row for row in rows) and not list((tmp_path / "words" / "images").iterdir())
    result = evaluate(str(pretrained["source"]), None, None, text)["model"]["text"]
    assert result["n"] == 60 and result["accuracy"] >= 0.8  # the text-only task the source LLM has learned


def test_eval_needs_data(pretrained):
    result = CliRunner().invoke(app, ["eval", str(pretrained["source"])])
    assert result.exit_code != 0 and "nothing to evaluate" in result.output
