"""Shared fixtures: tiny real checkpoints built once per test session with ``save_pretrained``."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers.utils import logging as hf_logging  # noqa: E402

from vlm_swap import zoo  # noqa: E402

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="session")
def llava(zoo_dir):
    """Tiny llava-hf sources by LLM family and tower kind, built on first use."""
    cache = {}

    def get(llm: str = "llama2", vision: str = "clip"):
        key = (llm, vision)
        if key not in cache:
            cache[key] = zoo.build_llava(zoo_dir / f"llava-{llm}-{vision}", llm=llm, vision=vision)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def perceiver(zoo_dir):
    cache = {}

    def get(family: str = "qwen3_vl"):
        if family not in cache:
            cache[family] = zoo.build_perceiver(zoo_dir / f"perceiver-{family}", family=family)
        return cache[family]

    return get


@pytest.fixture(scope="session")
def vit(zoo_dir):
    cache = {}

    def get(kind: str = "clip"):
        if kind not in cache:
            cache[kind] = zoo.build_vit(zoo_dir / f"vit-{kind}", kind=kind)
        return cache[kind]

    return get


@pytest.fixture(scope="session")
def bare_llm(zoo_dir):
    cache = {}

    def get(family: str = "qwen3"):
        if family not in cache:
            cache[family] = zoo.build_llm(zoo_dir / f"llm-{family}", family=family)
        return cache[family]

    return get


@pytest.fixture
def images():
    """Scenes of several sizes and aspect ratios."""
    return [zoo.make_scene(i, size).render() for i, size in enumerate([(96, 64), (64, 128), (160, 160)])]
