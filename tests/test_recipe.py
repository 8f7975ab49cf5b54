"""Recipe validation: key paths in errors, types, overrides, shipped recipes."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from vlm_swap.cli import app
from vlm_swap.train.recipe import RecipeError, load_recipe, shipped_recipes


def write(tmp_path, data) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


BASE = {"name": "t", "stages": [{"name": "a", "steps": 5}]}


def test_shipped_recipes_carry_the_dpa_settings():
    assert {"dpa-align-short", "vit-align-short", "tiny-cpu"} <= set(shipped_recipes())
    r = load_recipe("dpa-align-short")
    align, instruct = r.stages
    assert (align.connector.mode, align.llm.mode, align.encoder.mode) == ("full", "frozen", "frozen")
    assert (align.lr, align.scheduler, align.adam_beta2, align.weight_decay) == (1e-3, "wsd", 0.98, 0.01)
    assert instruct.llm.mode == "lora" and instruct.llm.lr == 2e-4
    assert (instruct.llm.lora.r, instruct.llm.lora.alpha, instruct.llm.lora.dropout) == (32, 32, 0.0)
    assert all(s.save_steps <= 10 for s in load_recipe("tiny-cpu").stages)


@pytest.mark.parametrize(
    "stage,match",
    [
        ({"name": "a", "steps": 5, "conector": {"mode": "full"}}, r"recipe\.stages\[0\]\.conector: unknown key"),
        ({"name": "a", "steps": "ten"}, r"recipe\.stages\[0\]\.steps: expected int"),
        (
            {"name": "a", "steps": 5, "llm": {"mode": "lora", "lora": {"rank": 8}}},
            r"recipe\.stages\[0\]\.llm\.lora\.rank: unknown key",
        ),
        ({"name": "a", "steps": 5, "epochs": 1}, "exactly one of steps or epochs"),
        ({"name": "a", "steps": 5, "llm": {"mode": "half"}}, "mode must be one of frozen, full, lora"),
        ({"name": "a", "steps": 5, "scheduler": "cosin"}, "scheduler must be one of"),
        ({"name": "a", "steps": 5, "connector": {"mode": "frozen"}}, "nothing to train"),
        ({"name": "a", "steps": 5, "lr": -1.0}, "lr must be positive"),
    ],
)
def test_invalid_recipes_name_the_key(tmp_path, stage, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe(write(tmp_path, {"name": "t", "stages": [stage]}))


def test_overrides_are_type_checked(tmp_path):
    path = write(tmp_path, BASE)
    r = load_recipe(path, ["stages.a.steps=7", "stages.0.lr=1e-4", "stages.a.llm.mode=lora"])
    assert (r.stages[0].steps, r.stages[0].lr, r.stages[0].llm.mode) == (7, 1e-4, "lora")
    with pytest.raises(RecipeError, match=r"stages\[0\]\.steps: expected int"):
        load_recipe(path, ["stages.0.steps=abc"])
    with pytest.raises(RecipeError, match="no stage 'nope'"):
        load_recipe(path, ["stages.nope.steps=1"])
    with pytest.raises(RecipeError, match="key.path=value"):
        load_recipe(path, ["steps"])


def test_recipe_errors_come_before_any_model_is_loaded(tmp_path):
    bad = write(tmp_path, {"name": "t", "stages": [{"name": "a", "steps": 5, "sheduler": "cosine"}]})
    result = CliRunner().invoke(
        app,
        [
            "train",
            bad,
            "--model",
            str(tmp_path / "no-model"),
            "--data",
            str(tmp_path / "no-data.json"),
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code != 0
    assert "sheduler: unknown key" in result.output and "no-model" not in result.output
    assert not (tmp_path / "run").exists()


def test_unknown_recipe_lists_the_shipped_ones():
    with pytest.raises(RecipeError, match="shipped: dpa-align-short"):
        load_recipe("dpa-align-shrt")
