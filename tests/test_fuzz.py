"""Fuzzing the inputs users write by hand: recipes (YAML, --set overrides) and dataset rows.

The fault injected is arbitrary input: random YAML-able values, valid recipes and rows with one part
replaced by a random value, random override strings. The property: the result is a valid object or
a ``VlmSwapError`` (rows: a ``RowError`` that the dataset reports with its line number), never any
other exception.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import vlm_swap
from vlm_swap.data import DataError, RowError, SampleEncoder, load_dataset, parse_row
from vlm_swap.errors import VlmSwapError
from vlm_swap.train.recipe import Recipe, from_dict, load_recipe, resolve_recipe_path

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=12)
keys = st.text(max_size=10) | st.integers(-3, 3)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(keys, c, max_size=4), max_leaves=12)


def _paths(node, prefix=()):
    """Every key path into a nested dict/list."""
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield from _paths(v, (*prefix, k))


def _replace(node, path, value):
    if not path:
        return value
    node = json.loads(json.dumps(node))
    target = node
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    return node


@st.composite
def mutated(draw, valid):
    """``valid`` with the value at one random key path replaced by a random value."""
    paths = list(_paths(valid))
    return _replace(valid, draw(st.sampled_from(paths)), draw(values))


SHIPPED = yaml.safe_load(resolve_recipe_path("tiny-cpu").read_text())


@FAST
@given(st.one_of(values, mutated(SHIPPED)))
@example({"stages": [{"steps": 1, "lr": float("nan")}]})
@example({"stages": [{"epochs": float("inf")}]})
def test_any_recipe_is_a_recipe_or_a_recipe_error(data):
    try:
        recipe = from_dict(Recipe, data)
    except VlmSwapError as exc:
        assert "\n" not in str(exc)
        return
    numbers = [v for s in recipe.stages for v in vars(s).values() if isinstance(v, float)]
    assert all(math.isfinite(v) for v in numbers)  # no NaN / inf learning rate, epochs, betas, ...


@FAST
@given(st.lists(st.text(max_size=30), max_size=3))
def test_any_override_is_applied_or_refused(overrides):
    try:
        assert isinstance(load_recipe("tiny-cpu", overrides), Recipe)
    except VlmSwapError as exc:
        assert "\n" not in str(exc)


VALID_ROWS = [
    {"conversations": [{"from": "human", "value": "<image>\nwhat color?"}, {"from": "gpt", "value": "red"}]},
    {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "what shape?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "a circle"}]},
        ]
    },
]
turns = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "gpt", "human"]), "content": st.text(max_size=8)}
)
conversations = st.lists(turns, min_size=1, max_size=4).map(lambda m: {"messages": m})
rows = st.one_of(values, conversations, *[mutated(r) for r in VALID_ROWS])


@FAST
@given(rows, st.integers(0, 3))
def test_any_row_parses_or_raises_a_row_error(row, max_images):
    try:
        messages, paths = parse_row(row, None, max_images)
    except RowError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert messages and len(paths) <= max_images


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, llava, vit):
    up = vlm_swap.upgrade(str(llava()), f"hf-vit:{vit()}", tmp_path_factory.mktemp("fuzz") / "up")
    _, processor = vlm_swap.load(up)
    return SampleEncoder(processor, 256)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(rows, min_size=1, max_size=4))
def test_a_dataset_of_any_rows_loads_or_names_the_bad_lines(encoder, batch):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in batch))
        try:
            samples, report = load_dataset(path, None, encoder)
        except DataError as exc:
            assert "\n" not in str(exc)
            assert "line " in str(exc) or "no usable rows" in str(exc), str(exc)
            return
        assert len(samples) == report.kept > 0
