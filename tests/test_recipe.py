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
        ({"name": "a", "steps": 5, "adam_beta2": 1.5}, r"adam_beta1 and adam_beta2 must be in \[0, 1\)"),
        ({"name": "a", "steps": 5, "seed": 10**20}, r"stages\[0\]\.seed: 100000000000000000000 is out of range"),
        ({"name": "a", "steps": 5, "seed": 2**40}, r"seed must be in \[0, 4294967295\]"),
        ({"name": "a", "steps": 5, "weight_decay": -0.1}, "weight_decay must be >= 0"),
        ({"name": "a", "steps": 5, "save_total_limit": 0}, "save_total_limit must be positive, or null"),
        ({"name": "a", "steps": 5, "eval_steps": -5}, "eval_steps must be positive, or null"),
        ({"name": "../../x", "steps": 5}, "stage name ../../x must be letters"),
        ({"name": "a", "steps": 5, "scheduler": "wsd", "warmup_ratio": 0.5, "decay_ratio": 0.8}, "at most 1"),
        ({"name": "a", "steps": 5, "llm": {"mode": "lora", "lora": {"target_modules": [""]}}}, "target_modules"),
    ],
)
def test_invalid_recipes_name_the_key(tmp_path, stage, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe(write(tmp_path, {"name": "t", "stages": [stage]}))


def _numeric_fields(cls, prefix=""):
    """(key path, type) of every int/float field of a recipe dataclass, nested ones included."""
    import dataclasses
    import typing

    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        if dataclasses.is_dataclass(inner[0]):
            yield from _numeric_fields(inner[0], f"{prefix}{f.name}.")
        elif inner[0] in (int, float):
            yield f"{prefix}{f.name}", inner[0]


def test_every_numeric_field_has_its_range_checked_at_load_time(tmp_path):
    """-1 fits no field; 1.5 fits none of the ratios, betas and the dropout (all in [0, 1])."""
    from vlm_swap.train.recipe import Recipe, Stage

    path = write(tmp_path, {"name": "t", "stages": [{"name": "a", "steps": 5, "llm": {"mode": "lora"}}]})
    fields = [(f"stages.a.{k}", tp) for k, tp in _numeric_fields(Stage)] + list(_numeric_fields(Recipe))
    assert len(fields) > 20
    for key, tp in fields:
        with pytest.raises(RecipeError):
            load_recipe(path, [f"{key}={tp(-1)}"])
    for key in ("warmup_ratio", "decay_ratio", "adam_beta1", "adam_beta2", "llm.lora.dropout"):
        with pytest.raises(RecipeError, match=r"\[0, 1"):
            load_recipe(path, [f"stages.a.{key}=1.5"])


def test_a_binary_recipe_file_is_one_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(RecipeError, match="not a text file"):
        load_recipe(str(path))


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


@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["--report-to", "nosuchlogger"], "unknown logger 'nosuchlogger'"),
        (["--report-to", "tensorbord"], "did you mean tensorboard"),
        (["--set", "stages.align.adam_beta2=1.5"], "adam_beta2 must be in [0, 1)"),
        (["--set", "stages.lora.seed=100000000000000000000"], "out of range"),
    ],
)
def test_bad_values_are_refused_before_a_run_directory_is_written(tmp_path, extra, fragment):
    run = tmp_path / "run"
    args = ["train", "tiny-cpu", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "d.json"), "--out", str(run)]
    result = CliRunner().invoke(app, [*args, *extra])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and fragment in result.output, result.output
    assert not run.exists()


def test_unknown_recipe_lists_the_shipped_ones():
    with pytest.raises(RecipeError, match="shipped: dpa-align-short"):
        load_recipe("dpa-align-shrt")
