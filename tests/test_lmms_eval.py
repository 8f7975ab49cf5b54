"""The lmms-eval plug-in: request handling checked against vlm-swap's own generation, batched and not."""

from __future__ import annotations

import importlib
import importlib.util

import pytest
import torch

import vlm_swap
from vlm_swap.generation import build_prompt, generate_answer
from vlm_swap.integrations.lmms_eval.runner import Runner, images_of

PLUGIN = "vlm_swap.integrations.lmms_eval"


@pytest.fixture(scope="module")
def runner(tmp_path_factory, llava, perceiver):
    root = tmp_path_factory.mktemp("lmms")
    up = vlm_swap.upgrade(str(llava("qwen3", "clip")), f"perceiver:{perceiver()}", root / "up")
    return Runner(str(up), device="cpu", batch_size=2)


def reference_loglikelihood(runner, context, continuation, pictures):
    """One request alone, no padding: sum of the continuation tokens' log-probs, all greedy."""
    proc, tok = runner.processor, runner.tokenizer
    inputs = proc(images=pictures, text=build_prompt(proc, context, len(pictures)), return_tensors="pt")
    cont = torch.tensor([tok(continuation, add_special_tokens=False)["input_ids"]])
    p = inputs["input_ids"].shape[1]
    inputs["input_ids"] = torch.cat([inputs["input_ids"], cont], 1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    with torch.no_grad():
        logprobs = runner.model(**inputs).logits[0].log_softmax(-1)[p - 1 : -1]
    return float(logprobs.gather(-1, cont[0][:, None]).sum()), bool((logprobs.argmax(-1) == cont[0]).all())


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


def test_loglikelihood_matches_an_unbatched_reference(runner, images):
    requests = [
        ("what color is the shape?", " red", images[:1]),
        ("which shape is on the left?", " a big blue circle", images[1:2]),
        ("and the right one?", " square", images[:2]),
    ]
    got = runner.loglikelihood(*(list(x) for x in zip(*requests, strict=True)))
    assert len(got) == 3
    for (context, continuation, pictures), (logprob, greedy) in zip(requests, got, strict=True):
        ref_logprob, ref_greedy = reference_loglikelihood(runner, context, continuation, pictures)
        assert logprob < 0 and abs(logprob - ref_logprob) < 1e-3
        assert greedy == ref_greedy


def test_images_of_accepts_lmms_eval_visuals(images):
    assert images_of(None) == [] and len(images_of(images[0])) == 1 and len(images_of(images)) == 3
    with pytest.raises(ValueError, match="images"):
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


def test_lmms_eval_class_answers_real_instances(runner, images):
    """Only where lmms_eval is importable: its own Instance objects through the plug-in class."""
    pytest.importorskip("lmms_eval")
    from lmms_eval.api.instance import Instance
    from lmms_eval.api.model import lmms

    from vlm_swap.integrations.lmms_eval import manifest
    from vlm_swap.integrations.lmms_eval.models.vlm_swap import VlmSwap

    assert manifest().simple_class_path.endswith("VlmSwap") and issubclass(VlmSwap, lmms)
    model = VlmSwap.create_from_arg_string(f"pretrained={runner.model.config._name_or_path}", {"batch_size": 2})
    model.task_dict = {"shapes": {"test": [{"image": images[0]}, {"image": images[1]}]}}
    visual = lambda doc: [doc["image"]]  # noqa: E731

    def meta(i):
        return {"task": "shapes", "doc_id": i, "repeats": 1}

    gen = [
        Instance(
            "generate_until",
            ("what color?", {"max_new_tokens": 4, "until": []}, visual, i, "shapes", "test"),
            i,
            meta(i),
        )
        for i in range(2)
    ]
    assert model.generate_until(gen) == runner.generate_until(
        ["what color?"] * 2, [images[:1], images[1:2]], [{"max_new_tokens": 4, "until": []}] * 2
    )
    target = lambda doc: " red"  # noqa: E731
    ll = [Instance("loglikelihood", ("what color?", target, visual, i, "shapes", "test"), i, meta(i)) for i in range(2)]
    assert model.loglikelihood(ll) == runner.loglikelihood(["what color?"] * 2, [" red"] * 2, [images[:1], images[1:2]])
