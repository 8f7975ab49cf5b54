"""Shared fixtures: tiny real checkpoints built once per test session with ``save_pretrained``."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "VLM_SWAP_CACHE" not in os.environ:  # the data index cache of the tests, never the user's
    import tempfile

    os.environ["VLM_SWAP_CACHE"] = tempfile.mkdtemp(prefix="vlm-swap-test-cache-")

from hypothesis import settings  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from vlm_swap import zoo  # noqa: E402

# CI replays the same fuzz examples on every run (a red run is reproducible); `--hypothesis-profile explore`
# draws new ones when hunting for bugs.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo")


def _cached(zoo_dir, builder, prefix):
    """A builder of tiny checkpoints that builds each variant once per test session."""
    cache = {}

    def get(*args):
        if args not in cache:
            cache[args] = builder(zoo_dir / "-".join((prefix, *args)), *args)
        return cache[args]

    return get


@pytest.fixture(scope="session")
def llava(zoo_dir):
    """Tiny llava-hf sources by LLM family and tower kind: ``llava("qwen2", "siglip")``."""
    return _cached(
        zoo_dir, lambda out, llm="llama2", vision="clip": zoo.build_llava(out, llm=llm, vision=vision), "llava"
    )


@pytest.fixture(scope="session")
def perceiver(zoo_dir):
    return _cached(zoo_dir, lambda out, family="qwen3_vl": zoo.build_perceiver(out, family=family), "perceiver")


@pytest.fixture(scope="session")
def vit(zoo_dir):
    return _cached(zoo_dir, lambda out, kind="clip": zoo.build_vit(out, kind=kind), "vit")


@pytest.fixture(scope="session")
def vision_lib(zoo_dir):
    """Tiny ViTs in the timm and open_clip hub layouts: ``vision_lib("timm")``, ``vision_lib("open-clip")``."""
    from vlm_swap.zoo.vision_libs import build_open_clip, build_timm_vit

    builders = {"timm": build_timm_vit, "open-clip": build_open_clip}
    return _cached(zoo_dir, lambda out, kind: builders[kind](out), "vision-lib")


@pytest.fixture(scope="session")
def bare_llm(zoo_dir):
    return _cached(zoo_dir, lambda out, family="qwen3": zoo.build_llm(out, family=family), "llm")


@pytest.fixture
def images():
    """Scenes of several sizes and aspect ratios."""
    return [zoo.make_scene(i, size).render() for i, size in enumerate([(96, 64), (64, 128), (160, 160)])]


@pytest.fixture(scope="session")
def llava_next(zoo_dir):
    """Tiny llava-hf LLaVA-NeXT sources by LLM family: ``llava_next("mistral")``."""
    from vlm_swap.zoo.sources import build_llava_next

    return _cached(zoo_dir, lambda out, llm="mistral": build_llava_next(out, llm=llm), "llava-next")


@pytest.fixture(scope="session")
def llava_original(zoo_dir):
    """Tiny checkpoints in the original LLaVA repository layout: ``llava_original("llama2")``."""
    from vlm_swap.zoo.sources import build_llava_original

    return _cached(zoo_dir, lambda out, llm="llama2": build_llava_original(out, llm=llm), "llava-original")
