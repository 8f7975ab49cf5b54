"""The generic registry, the connector table and plug-ins through entry points."""

from __future__ import annotations

import sys

import pytest
import torch

from vlm_swap import registry
from vlm_swap.backends import BUILT_IN_KINDS, ENCODERS, EncoderSpec
from vlm_swap.connectors import CONNECTORS
from vlm_swap.errors import VlmSwapError
from vlm_swap.format.kinds import BUILT_IN_KINDS as FORMAT_KINDS
from vlm_swap.format.kinds import encoder_module
from vlm_swap.registry import Lazy, Registry, UnknownIdError


def test_unknown_id_suggests_the_closest():
    with pytest.raises(UnknownIdError, match=r"unknown encoder kind 'perciever'; did you mean perceiver\?"):
        ENCODERS.get("perciever")


def test_no_substring_matching_and_fnmatch_listing():
    reg = Registry("thing")
    reg.register("siglip-so400m-384", 1)
    reg.register("siglip2-so400m-384", 2)
    with pytest.raises(UnknownIdError):
        reg.get("siglip")
    assert reg.ids("siglip2*") == ["siglip2-so400m-384"]


def test_duplicates_and_bad_ids_refused():
    reg = Registry("thing")
    reg.register("a-b", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a-b", 2)
    with pytest.raises(ValueError, match="kebab-case"):
        reg.register("Bad_Id", 3)


def test_lazy_entries_are_listed_as_their_stand_in_until_looked_up():
    reg = Registry("thing")
    reg.register("dumps", Lazy("json:dumps", "stand-in"))
    assert dict(reg.listed()) == {"dumps": "stand-in"}
    import json

    assert reg.get("dumps") is json.dumps and dict(reg.items()) == dict(reg.listed()) == {"dumps": json.dumps}


@pytest.mark.parametrize("kind", sorted(BUILT_IN_KINDS))
def test_encoder_kinds_list_the_facts_of_their_backend_classes(kind):
    listed, backend = BUILT_IN_KINDS[kind].listed, BUILT_IN_KINDS[kind].load()
    assert backend.kind == kind and ENCODERS.get(kind) is backend
    assert (listed.help, listed.input_names, listed.uses_boundaries) == (
        backend.help,
        backend.input_names,
        backend.uses_boundaries,
    )
    assert backend.runtime is encoder_module(kind)  # the format builds the module the backend loads into


def test_the_format_and_the_registry_know_the_same_built_in_kinds():
    assert set(FORMAT_KINDS) == set(BUILT_IN_KINDS)


def test_encoder_spec_parsing():
    assert EncoderSpec.parse("perceiver:qwen3-vl-2b") == EncoderSpec("perceiver", "qwen3-vl-2b")
    assert EncoderSpec.parse("hf-vit:/a/b:c").source == "/a/b:c"
    with pytest.raises(VlmSwapError, match="KIND:SOURCE"):
        EncoderSpec.parse("qwen3-vl-2b")
    with pytest.raises(UnknownIdError, match="did you mean hf-vit"):
        EncoderSpec.parse("hf-vt:x")


@pytest.mark.parametrize("cid,d_in,d_out", [("mlp2x-relu", 48, 64), ("mlp2x-gelu", 48, 64), ("linear", 48, 64)])
def test_connectors_map_widths_and_count_params(cid, d_in, d_out):
    kind = CONNECTORS.get(cid)
    module = kind.build(d_in, d_out)
    assert module(torch.zeros(3, 5, d_in)).shape == (3, 5, d_out)
    assert sum(p.numel() for p in module.parameters()) == kind.num_params(d_in, d_out)


def test_plugin_registers_through_entry_point(tmp_path, monkeypatch):
    dist = tmp_path / "vlm_swap_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vlm-swap-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[vlm_swap.plugins]\nextra = vlm_swap_test_plugin:register\n")
    (tmp_path / "vlm_swap_test_plugin.py").write_text(
        "from vlm_swap.connectors import CONNECTORS, ConnectorKind\n"
        "def register():\n"
        "    CONNECTORS.register('plugin-linear', ConnectorKind('plugin-linear', 'from a plug-in', 'none'))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    try:
        assert "plugin-linear" in CONNECTORS.ids()
        assert CONNECTORS.get("plugin-linear").build(4, 8)(torch.zeros(1, 4)).shape == (1, 8)
    finally:
        CONNECTORS._entries.pop("plugin-linear", None)
        sys.modules.pop("vlm_swap_test_plugin", None)


def test_a_plugin_encoder_kind_and_connector_build_load_and_run_but_do_not_export(tmp_path, llava, vit, images):
    """A plug-in kind is a backend whose ``runtime`` the plug-in brings; the saved model finds both it and a plug-in
    connector through the installed registries, and the remote-code export (vlm-swap's own kinds only) refuses it."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import vlm_swap
    from vlm_swap.backends.base import LoadOptions
    from vlm_swap.backends.hf_vit import HFViTBackend
    from vlm_swap.connectors import ConnectorKind
    from vlm_swap.export import export
    from vlm_swap.format.hf_vit import HFViTEncoder

    class PluginViT(HFViTEncoder):
        kind = "plugin-vit"

    class PluginBackend(HFViTBackend):
        runtime = PluginViT

        @classmethod
        def load(cls, source, options=LoadOptions()):
            loaded = super().load(source, options)
            loaded.module = PluginViT(loaded.config, loaded.module.args, model=loaded.module.model)
            return loaded

    ENCODERS.register("plugin-vit", PluginBackend)
    CONNECTORS.register("plugin-linear", ConnectorKind("plugin-linear", "from a plug-in", "none"))
    try:
        out = vlm_swap.upgrade(
            str(llava("llama2", "clip")), f"plugin-vit:{vit('clip')}", tmp_path / "up", connector="plugin-linear"
        )
        model = AutoModelForImageTextToText.from_pretrained(out).eval()
        processor = AutoProcessor.from_pretrained(out)
        assert type(model.encoder) is PluginViT and model.config.connector == "plugin-linear"
        inputs = processor(images=[images[0]], text=f"{processor.image_token} what?", return_tensors="pt")
        with torch.no_grad():
            assert torch.isfinite(model(**inputs).logits).all()
        with pytest.raises(VlmSwapError, match="plug-in"):
            export(out, "remote-code", tmp_path / "rc")
        assert not (tmp_path / "rc").exists()
    finally:
        ENCODERS._entries.pop("plugin-vit", None)
        CONNECTORS._entries.pop("plugin-linear", None)
