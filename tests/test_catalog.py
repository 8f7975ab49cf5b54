"""The catalog as data: family files validated on load, and stored inspect reports equal to meta-device builds."""

from __future__ import annotations

import json

import pytest

from vlm_swap.catalog import BUILT_IN, CATALOG, REPORTS, load_file, stored_report
from vlm_swap.errors import VlmSwapError
from vlm_swap.inspection.meta import catalog_reports

GOOD = """\
tiny-llm:
  hub_id: org/tiny
  role: llm
  family: qwen3
  hidden_size: 64
  context: 128
  arch: {model_type: qwen3, hidden_size: 64}
"""


def test_a_family_file_loads_into_entries(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(GOOD)
    (entry,) = load_file(path)
    assert (entry.id, entry.hub_id, entry.role) == ("tiny-llm", "org/tiny", "llm")
    assert (entry.hidden_size, entry.context, entry.tokens_per_image) == (64, 128, 0)
    assert entry.arch == {"model_type": "qwen3", "hidden_size": 64} and entry.boundaries is True


@pytest.mark.parametrize(
    "edit,message",
    [
        (("  context: 128\n", "  contxt: 128\n"), "tiny-llm: unknown key 'contxt'"),
        (("  hub_id: org/tiny\n", ""), "tiny-llm: missing key 'hub_id'"),
        (("size: 64\n", "size: '64'\n"), "tiny-llm.hidden_size: expected int, got '64'"),
        (("size: 64\n", "size: true\n"), "tiny-llm.hidden_size: expected int, got True"),
        (("role: llm", "role: lm"), "tiny-llm.role: 'lm' is not one of perceiver, vit, llm, vlm"),
        (("role: llm", "role: vit"), "tiny-llm.encoder_kind: a vit names the encoder kind that loads it"),
        (("{model_type: qwen3, ", "{"), "tiny-llm.arch.model_type: the published config names its model type"),
        (("  context: 128\n", "  context: 128\n  context: 256\n"), "duplicate key 'context'"),
        (("tiny-llm:\n", "- tiny-llm:\n"), "expected a mapping of catalog id -> fields"),
        (("  arch: {", "  arch: {{"), "cannot read the catalog file"),
    ],
)
def test_a_bad_family_file_is_one_error_naming_the_file_and_key(tmp_path, edit, message):
    path = tmp_path / "tiny.yaml"
    path.write_text(GOOD.replace(*edit))
    with pytest.raises(VlmSwapError) as exc:
        load_file(path)
    assert str(exc.value).startswith(f"{path}: ") and message in str(exc.value), exc.value
    assert "\n" not in str(exc.value)  # one line, as the CLI prints it


def test_every_family_file_holds_distinct_valid_ids():
    assert len(BUILT_IN) == len(set(BUILT_IN)) and set(BUILT_IN) <= set(CATALOG.ids())
    for id in BUILT_IN:
        entry = CATALOG.get(id)
        assert (entry.role in ("perceiver", "vit")) == bool(entry.encoder_kind), id


def test_stored_reports_are_the_meta_device_builds():
    """reports.json is what building each architecture on the meta device reports (it cannot drift from it)."""
    built = catalog_reports()
    stored = json.loads(REPORTS.read_text())
    assert sorted(stored) == sorted(built), "run `python -m vlm_swap.inspection.meta` to rewrite reports.json"
    for id, report in built.items():
        assert stored_report(id) == report, f"{id}: run `python -m vlm_swap.inspection.meta` to rewrite reports.json"
        assert json.dumps(stored[id]) == json.dumps(report), id  # keys in the same order too (inspect's output)
    assert stored_report("qwen3-vl-4b") is None  # no architecture, no report
