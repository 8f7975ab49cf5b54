"""The lmms-eval plug-in: request handling against vlm-swap's own generation and scoring, the model
class on lmms-eval's own objects, and lmms-eval's CLI end to end on the local tasks in
``tests/lmms_eval_tasks`` (a trained run; scores equal to ``vlm-swap eval`` on the same rows).

The tests that need lmms_eval skip without it; install the extra (README, lmms-eval) to run them.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import vlm_swap
from vlm_swap import zoo
from vlm_swap.data import Sample, SampleEncoder
from vlm_swap.errors import VlmSwapError
from vlm_swap.evaluation import _mean_nll, evaluate
from vlm_swap.generation import generate_answer
from vlm_swap.integrations.lmms_eval.runner import Runner, batch_size_of, dtype_of, images_of
from vlm_swap.train.run import train

PLUGIN = "vlm_swap.integrations.lmms_eval"
TASKS = Path(__file__).parent / "lmms_eval_tasks"
HAS_LMMS_EVAL = importlib.util.find_spec("lmms_eval") is not None
needs_lmms_eval = pytest.mark.skipif(
    not HAS_LMMS_EVAL, reason='lmms-eval not installed (pip install -e ".[lmms-eval]")'
)


@pytest.fixture(scope="module")
def runner(tmp_path_factory, llava, perceiver):
    root = tmp_path_factory.mktemp("lmms")
    up = vlm_swap.upgrade(str(llava("qwen3", "clip")), f"perceiver:{perceiver()}", root / "up")
    return Runner(str(up), device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """The embedded pretrained pair, upgraded and briefly aligned (connector, then LoRA): a training run."""
    root = tmp_path_factory.mktemp("lmms-run")
    models = zoo.build_default(root / "zoo")
    up = vlm_swap.upgrade(str(models["source"]), f"perceiver:{models['perceiver']}", root / "up")
    data = zoo.write_dataset(root / "train", 64, seed=3)
    fast = [f"stages.{s}.{k}" for s in ("align", "lora") for k in ("batch_size=8", "save_steps=100")]
    fast += ["stages.align.steps=8", "stages.lora.steps=4"]
    return train("tiny-cpu", up, data, root / "run", images=data.parent, overrides=fast, progress=False)


def vlm_swap_eval_loss(runner, context, answer, pictures):
    """``vlm-swap eval``'s score of one option: the mean NLL of the answer as the assistant's turn."""
    turn = [{"type": "image"}] * len(pictures) + [{"type": "text", "text": context}]
    messages = [{"role": "user", "content": turn}, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    with torch.no_grad():
        return _mean_nll(runner.model, SampleEncoder(runner.processor, 4096)(Sample(0, messages, []), images=pictures))


def test_generate_until_matches_vlm_swap_generate_in_batches(runner, images, tmp_path):
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        img.save(paths[-1])
    contexts = ["what color is the shape?", "how many shapes are there?", "describe the scene."]
    kwargs = [{"max_new_tokens": 5, "until": []}] * 2 + [{"max_new_tokens": 3, "temperature": 0}]
    got = runner.generate_until(contexts, [[img] for img in images], kwargs)
    for context, path, kw, answer in zip(contexts, paths, kwargs, got, strict=True):
        expected = "".join(
            generate_answer(
                "",
                [str(path)],
                context,
                max_new_tokens=kw["max_new_tokens"],
                model=runner.model,
                processor=runner.processor,
            )
        )
        assert answer == expected

    stop = got[0][2:4]
    assert stop and runner.generate_until(contexts[:1], [images[:1]], [{"max_new_tokens": 5, "until": stop}]) == [
        got[0].split(stop, 1)[0]
    ]


def test_loglikelihood_is_vlm_swap_evals_loss_batched_or_not(runner, images):
    requests = [
        ("what color is the shape?", "red", images[:1]),
        ("which shape is on the left?", " a big blue circle", images[1:2]),  # lmms-eval's delimiter first
        ("and the right one?", "square", images[:2]),
    ]
    got = runner.loglikelihood(*(list(x) for x in zip(*requests, strict=True)))  # batches of 2: padded
    alone = [runner.loglikelihood([c], [a], [p])[0] for c, a, p in requests]
    for (context, answer, pictures), (loss, greedy), (loss1, greedy1) in zip(requests, got, alone, strict=True):
        reference = vlm_swap_eval_loss(runner, context, answer.lstrip(), pictures)
        assert loss > 0 and abs(loss - reference) < 1e-4 and abs(loss1 - reference) < 1e-4
        assert greedy == greedy1
    assert runner.loglikelihood(["what color?"], [" red"], [images[:1]]) == runner.loglikelihood(
        ["what color?"], ["red"], [images[:1]]
    )


def test_the_trained_runs_own_answer_is_greedy(trained_run):
    runner = Runner(str(trained_run), device="cpu", batch_size=4)
    rows = json.loads((TASKS / "qa.json").read_text())
    contexts = [row["conversations"][0]["value"].removeprefix("<image>\n") for row in rows]
    pictures = [[images_of(Image.open(TASKS / row["image"]))[0]] for row in rows]
    answers = [a.strip() for a in runner.generate_until(contexts, pictures, [{"max_new_tokens": 8}] * len(rows))]
    assert all(answers) and all(greedy for _, greedy in runner.loglikelihood(contexts, answers, pictures))
    wrong = runner.loglikelihood(contexts, [f"{a} zebra" for a in answers], pictures)
    assert not any(greedy for _, greedy in wrong)


def test_image_placeholders_in_the_context_must_match_the_images(runner, images):
    token = runner.processor.image_token
    context = f"{token}{token} what color is the shape?"
    with pytest.raises(VlmSwapError, match="image"):
        runner.loglikelihood([context], ["red"], [images[:1]])
    with pytest.raises(VlmSwapError, match="image"):
        runner.generate_until([context], [images[:1]], [{"max_new_tokens": 2}])
    one = runner.loglikelihood([f"{token}\nwhat color is the shape?"], ["red"], [images[:1]])
    assert one[0][0] > 0


def test_batch_size_and_dtype_options():
    assert batch_size_of(4) == 4 and batch_size_of("3") == 3
    for auto in ("auto", "auto:4"):
        with pytest.raises(VlmSwapError, match="not supported.*--batch_size 8"):
            batch_size_of(auto)
    for bad in ("0", -1, "two", True, 2.5):
        with pytest.raises(VlmSwapError, match="positive integer"):
            batch_size_of(bad)
    assert dtype_of("auto") is None and dtype_of("bfloat16") is torch.bfloat16
    with pytest.raises(VlmSwapError, match="dtype"):
        dtype_of("bf16")


def test_images_of_accepts_lmms_eval_visuals(images):
    assert images_of(None) == [] and len(images_of(images[0])) == 1 and len(images_of(images)) == 3
    with pytest.raises(VlmSwapError, match="images"):
        images_of(["clip.mp4"])


def test_plugin_layout_is_what_lmms_eval_loads():
    # LMMS_EVAL_PLUGINS=PLUGIN: lmms-eval imports PLUGIN.models, reads AVAILABLE_MODELS, imports
    # PLUGIN.models.<name>.<class>, and adds PLUGIN.tasks to its task paths.
    table = importlib.import_module(f"{PLUGIN}.models").AVAILABLE_MODELS
    assert table == {"vlm_swap": "VlmSwap"}
    assert importlib.util.find_spec(f"{PLUGIN}.models.vlm_swap") is not None
    assert importlib.util.find_spec(f"{PLUGIN}.tasks").submodule_search_locations
    from vlm_swap.integrations.lmms_eval import CLASS_PATH

    assert CLASS_PATH == f"{PLUGIN}.models.vlm_swap.VlmSwap"


@needs_lmms_eval
def test_model_args_and_lmms_eval_settings(runner, tmp_path):
    from vlm_swap.integrations.lmms_eval.models.vlm_swap import VlmSwap

    path = runner.model.config._name_or_path
    cli = {"batch_size": "3", "max_batch_size": None, "device": "cpu"}  # what simple_evaluate passes
    assert VlmSwap.create_from_arg_string(f"pretrained={path}", cli).runner.batch_size == 3
    assert VlmSwap.create_from_arg_string(f"pretrained={path},batch_size=4", cli).runner.batch_size == 4
    cases = [
        (f"pretrained={path}", {"batch_size": "auto"}, "batch size 'auto' is not supported"),
        (f"pretrained={path},dtype=bf16", {}, "dtype must be"),
        (f"pretrained={path},batchsize=4", {}, "unknown model_args batchsize"),
        (f"pretrained={tmp_path / 'nothing'}", {}, "nothing"),
        ("", {}, "needs pretrained"),
    ]
    for args, settings, message in cases:
        with pytest.raises(VlmSwapError, match=message) as info:
            VlmSwap.create_from_arg_string(args, settings)
        assert str(info.value).startswith("vlm_swap: ") and "\n" not in str(info.value)


@needs_lmms_eval
def test_lmms_eval_class_answers_real_instances(runner, images):
    from lmms_eval.api.instance import Instance
    from lmms_eval.api.model import lmms

    from vlm_swap.integrations.lmms_eval import manifest
    from vlm_swap.integrations.lmms_eval.models.vlm_swap import VlmSwap, likelihoods_reach_tasks

    assert manifest().simple_class_path.endswith("VlmSwap") and issubclass(VlmSwap, lmms)
    model = VlmSwap.create_from_arg_string(f"pretrained={runner.model.config._name_or_path}", {"batch_size": 2})
    model.task_dict = {"shapes": {"test": [{"image": images[0]}, {"image": images[1]}]}}
    visual = lambda doc: [doc["image"]]  # noqa: E731

    def meta(i):
        return {"task": "shapes", "doc_id": i, "repeats": 1}

    kw = {"max_new_tokens": 4, "until": []}
    gen = [Instance("generate_until", ("what color?", kw, visual, i, "shapes", "test"), i, meta(i)) for i in range(2)]
    assert model.generate_until(gen) == runner.generate_until(["what color?"] * 2, [images[:1], images[1:2]], [kw] * 2)
    target = lambda doc: " red"  # noqa: E731
    ll = [Instance("loglikelihood", ("what color?", target, visual, i, "shapes", "test"), i, meta(i)) for i in range(2)]
    if likelihoods_reach_tasks():
        expected = runner.loglikelihood(["what color?"] * 2, [" red"] * 2, [images[:1], images[1:2]])
        assert model.loglikelihood(ll) == expected
    else:  # lmms-eval 0.7.0-0.7.3 would hand the task the pairs as text: refused in one line
        with pytest.raises(VlmSwapError, match="vlm_swap: lmms-eval 0.7.* multiple_choice and loglikelihood"):
            model.loglikelihood(ll)
    with pytest.raises(VlmSwapError, match="vlm_swap: .*video"):
        video = Instance("generate_until", ("x", kw, lambda doc: ["a.mp4"], 0, "shapes", "test"), 0, meta(0))
        model.generate_until([video])


def lmms_eval_cli(tmp_path: Path, run: Path, tasks: list[str], *options: str) -> tuple[dict | None, str]:
    """``python -m lmms_eval`` on the local tasks, offline: (results or None, the output)."""
    out = tmp_path / "logs"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "lmms_eval", "--model", "vlm_swap", "--include_path", str(TASKS)]
    command += ["--tasks", ",".join(tasks), "--model_args", f"pretrained={run}", "--output_path", str(out), *options]
    done = subprocess.run(command, cwd=TASKS, env=env, capture_output=True, text=True, timeout=900)
    found = sorted(out.rglob("*results*.json"))
    return (json.loads(found[-1].read_text())["results"] if found else None), done.stdout + done.stderr


@needs_lmms_eval
def test_lmms_eval_cli_scores_equal_vlm_swap_eval(trained_run, tmp_path):
    """lmms-eval as users run it (entry point, --include_path, batches of 2 from --batch_size) on the
    rows that ``vlm-swap eval`` scores: the same exact-match and multiple-choice accuracy."""
    from vlm_swap.integrations.lmms_eval.models.vlm_swap import likelihoods_reach_tasks

    qa = evaluate(str(trained_run), TASKS / "qa.json", TASKS, None)["model"]
    mc = evaluate(str(trained_run), TASKS / "mc.json", TASKS, None)["model"]["choice"]
    # picking the least likely option instead (an inverted order) scores 0.0 on this run: the check has teeth
    assert mc["n"] == 12 and mc["accuracy"] >= 0.5 and qa["n"] == 8
    tasks = ["vlm_swap_shapes_qa"] + (["vlm_swap_shapes_mc"] if likelihoods_reach_tasks() else [])
    results, output = lmms_eval_cli(tmp_path, trained_run, tasks, "--batch_size", "2", "--device", "cpu")
    assert results is not None, output[-3000:]
    assert results["vlm_swap_shapes_qa"]["exact_match,none"] == pytest.approx(qa["accuracy"])
    if likelihoods_reach_tasks():
        assert results["vlm_swap_shapes_mc"]["acc,none"] == pytest.approx(mc["accuracy"])


@needs_lmms_eval
def test_lmms_eval_cli_reports_our_errors_in_one_line(trained_run, tmp_path):
    results, output = lmms_eval_cli(tmp_path, trained_run, ["vlm_swap_shapes_qa"], "--batch_size", "auto")
    assert results is None
    assert "Error during evaluation: vlm_swap: batch size 'auto' is not supported" in output, output[-3000:]
