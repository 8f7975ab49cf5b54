"""Data through the CLI and across processes: one-line refusals, the data report, one build for all ranks."""

from __future__ import annotations

import json
import multiprocessing
import shutil

import pytest
from PIL import Image
from typer.testing import CliRunner

import vlm_swap
from vlm_swap.cli import app
from vlm_swap.data import SampleEncoder, index, load_dataset
from vlm_swap.zoo.world import write_dataset

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def setup(tmp_path_factory, llava, perceiver):
    root = tmp_path_factory.mktemp("datacli")
    up = vlm_swap.upgrade(str(llava("llama2", "clip")), f"perceiver:{perceiver()}", root / "up")
    data = write_dataset(root / "data", 6, seed=3)
    Image.new("RGB", (4000, 3), "white").save(root / "data" / "images" / "wide.png")
    return root, up, data


def _one_line_failure(result, *fragments):
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    text = " ".join(result.output.split())  # rich wraps long lines at the terminal width
    for fragment in fragments:
        assert fragment in text, result.output


def test_generate_refuses_an_extreme_aspect_ratio_in_one_line(setup):
    root, up, _ = setup
    result = run("generate", up, "--image", root / "data" / "images" / "wide.png", "--prompt", "what is it?")
    _one_line_failure(result, "the image processor refuses the image (4000x3)", "aspect ratio must be smaller than 200")


def test_eval_names_the_line_of_an_extreme_aspect_ratio(setup):
    root, up, data = setup
    rows = json.loads(data.read_text())
    rows[1]["image"] = "images/wide.png"
    bad = root / "data" / "wide.json"
    bad.write_text(json.dumps(rows))
    _one_line_failure(run("eval", up, "--data", bad, "--images", data.parent), "line 2: the image processor refuses")


def test_train_refuses_paths_outside_images_then_allows_them_explicitly(setup):
    root, up, data = setup
    images = root / "data" / "images"
    (root / "elsewhere").mkdir(exist_ok=True)
    rows = json.loads(data.read_text())
    for row in rows:
        row["image"] = row["image"].removeprefix("images/")
    shutil.copy(images / rows[2]["image"], root / "elsewhere" / "moved.png")
    rows[2]["image"] = str(root / "elsewhere" / "moved.png")  # an absolute path outside --images
    outside = root / "outside.json"
    outside.write_text(json.dumps(rows))
    common = ["train", "tiny-cpu", "--model", up, "--data", outside, "--images", images]
    fast = ["--set", "stages.align.steps=1", "--set", "stages.lora.steps=1", "--set", "dataloader_workers=0"]
    _one_line_failure(
        run(*common, "--out", root / "refused", *fast),
        "line 3: image path",
        "resolves outside the images folder (pass --allow-absolute-paths)",
    )
    assert not (root / "refused").exists()
    result = run(*common, "--out", root / "allowed", "--allow-absolute-paths", *fast)
    assert result.exit_code == 0, result.output
    assert "data: 6/6 rows kept, 0 malformed, 0 too long" in result.output


def _load_in_child(processor, data, queue) -> None:
    built = []
    build = index._build
    index._build = lambda *a, **k: built.append(1) or build(*a, **k)
    try:
        samples, _ = load_dataset(data, None, SampleEncoder(processor, 512))
    except Exception as exc:  # reported to the test, which would otherwise wait for nothing
        queue.put((-1, repr(exc)))
        raise
    queue.put((len(built), len(samples)))


def test_processes_started_together_build_the_index_once(setup, tmp_path, monkeypatch):
    _, up, data = setup
    monkeypatch.setenv("VLM_SWAP_CACHE", str(tmp_path / "cache"))
    _, processor = vlm_swap.load(up)
    context = multiprocessing.get_context("fork")  # like torchrun's ranks: separate processes, one cache
    queue = context.Queue()
    procs = [context.Process(target=_load_in_child, args=(processor, data, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sorted(results) == [(0, 6), (1, 6)]  # one built it, the other waited on the lock and read it
