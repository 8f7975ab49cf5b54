"""The CLI: listings, pairs, upgrade/build/generate, and clear one-line errors for bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
from typer.testing import CliRunner

from vlm_swap.cli import app
from vlm_swap.train.lock import LOCK_NAME
from vlm_swap.zoo import make_scene
from vlm_swap.zoo.world import write_dataset

from .helpers import cli_command

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_clean_failure(result, *fragments, out_dir=None):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    line = result.output.strip()
    for frag in fragments:
        assert frag in line, line
    if out_dir is not None:
        assert not out_dir.exists() or not any(out_dir.iterdir())
        assert not list(out_dir.parent.glob(f".{out_dir.name}.tmp-*"))


@pytest.mark.parametrize(
    "what,keys",
    [
        ("encoders", {"perceiver", "hf-vit"}),
        ("sources", {"llava"}),
        ("connectors", {"mlp2x-relu", "mlp2x-gelu", "linear"}),
        ("llms", {"qwen2", "qwen3", "llama2", "llama3"}),
        ("catalog", {"qwen3-vl-2b", "siglip-so400m-384", "qwen3-4b"}),
    ],
)
def test_list_json(what, keys):
    result = run("list", what, "--json")
    assert result.exit_code == 0, result.output
    assert keys <= set(json.loads(result.output))


def test_list_table_and_filter():
    result = run("list", "catalog", "--filter", "qwen3-*")
    assert result.exit_code == 0 and "qwen3-4b" in result.output and "vicuna" not in result.output


def test_listings_fit_the_screen_and_say_when_nothing_matches():
    result = run("list", "catalog", "--filter", "qwen3*")
    assert result.exit_code == 0 and "qwen3-4b" in result.output
    assert len(result.output.splitlines()) < 80, "a nested column (the architecture) is back in the table"
    assert "arch: with --json" in result.output and "num_hidden_layers" not in result.output
    empty = run("list", "catalog", "--filter", "zzz*")
    assert (
        empty.exit_code == 1
        and empty.output.strip() == "no catalog match 'zzz*' (vlm-swap list catalog lists them all)"
    )
    assert json.loads(run("list", "catalog", "--filter", "zzz*", "--json").output) == {}


def test_help_usage_and_version():
    from vlm_swap import __version__

    top = run("--help")
    assert "Upgrade LLaVA-style VLMs" in top.output and "calls one library function" not in top.output
    assert run("--version").output.strip() == f"vlm-swap {__version__}"
    for cmd, usage in (("upgrade", "upgrade [OPTIONS] SOURCE"), ("list", "list [OPTIONS] WHAT"), ("merge", "RUN")):
        text = run(cmd, "--help").output
        assert usage in text and "{" not in text.splitlines()[1], text


def test_paths_with_brackets_print_as_typed(tmp_path, llava, vit):
    """rich markup in user strings ('[/y]', '[red]') is printed literally, never interpreted or refused."""
    for name in ("x[/y]", "mödel [red]v2"):
        out = tmp_path / name
        result = run("upgrade", llava(), "-e", f"hf-vit:{vit()}", "-o", out)
        assert result.exit_code == 0 and f"upgraded model written to {out}" in result.output, result.output
        assert (out / "config.json").is_file()
    report = run("inspect", llava())
    assert report.exit_code == 0 and "[safetensors]" in report.output.splitlines()[0]
    assert_clean_failure(run("inspect", tmp_path / "q[/z]"), f"path not found: {tmp_path / 'q[/z]'}")


def test_pairs_recommend_same_family_first():
    result = run("pairs", "--llm", "qwen3-4b", "--json")
    rows = json.loads(result.output)
    perceivers = [r for r in rows if r["encoder"].startswith("qwen")]
    assert perceivers[0]["same_family"] and perceivers[0]["encoder"].startswith("qwen3-vl")
    fam = {r["encoder"]: next(c for c in r["checks"] if c["name"] == "text family") for r in rows}
    assert fam["qwen2.5-vl-3b"]["status"] == "warn" and fam["qwen3-vl-2b"]["status"] == "ok"
    assert_clean_failure(run("pairs", "--llm", "qwen3-vl-2b"), "not an LLM")


def test_inspect_json(llava):
    result = run("inspect", llava(), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["total_params"] > 0


def test_upgrade_then_generate(tmp_path, llava, vit):
    out = tmp_path / "up"
    result = run("upgrade", llava(), "--encoder", f"hf-vit:{vit('clip')}", "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / "config.json").is_file() and (out / "model.safetensors.index.json").is_file()
    image = tmp_path / "scene.png"
    make_scene(3).render().save(image)
    result = run("generate", out, "--image", image, "--prompt", "what shape is on the left?", "--max-new-tokens", 3)
    assert result.exit_code == 0, result.output
    # a second upgrade into the same place needs --force, and then replaces it
    assert_clean_failure(
        run("upgrade", llava(), "--encoder", f"hf-vit:{vit('clip')}", "--out", out), "not empty", "--force"
    )
    assert (out / "config.json").is_file()
    result = run("upgrade", llava(), "-e", f"hf-vit:{vit('siglip')}", "-o", out, "--force")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "vlm_swap.json").read_text())["encoder"].startswith("hf-vit:")
    assert "siglip" in json.loads((out / "config.json").read_text())["encoder_config"]["model_type"]


def test_build_from_bare_llama3(tmp_path, bare_llm, perceiver):
    out = tmp_path / "built"
    result = run("build", "--llm", bare_llm("llama3"), "--encoder", f"perceiver:{perceiver()}", "--out", out)
    assert result.exit_code == 0, result.output
    prov = json.loads((out / "vlm_swap.json").read_text())
    assert set(prov["added_tokens"]) >= {"<image>", "<|vision_start|>", "<|vision_end|>"}
    assert prov["pad_token"] == "<|finetune_right_pad_id|>"


# ---- bad input: one line naming the cause, exit != 0, nothing in --out --------------------------------


def test_missing_source_path(tmp_path, vit):
    out = tmp_path / "o"
    assert_clean_failure(
        run("upgrade", tmp_path / "nope", "-e", f"hf-vit:{vit()}", "-o", out), "path not found", out_dir=out
    )


def test_not_a_vlm(tmp_path, bare_llm, vit):
    out = tmp_path / "o"
    assert_clean_failure(
        run("upgrade", bare_llm(), "-e", f"hf-vit:{vit()}", "-o", out),
        "causal LM, not a VLM",
        "vlm-swap build",
        out_dir=out,
    )


def test_unknown_encoder_kind(tmp_path, llava):
    out = tmp_path / "o"
    assert_clean_failure(
        run("upgrade", llava(), "-e", "perciever:x", "-o", out),
        "unknown encoder kind",
        "did you mean perceiver",
        out_dir=out,
    )


def test_unknown_connector(tmp_path, llava, vit):
    out = tmp_path / "o"
    assert_clean_failure(
        run("upgrade", llava(), "-e", f"hf-vit:{vit()}", "-o", out, "--connector", "mlp2x-rel"),
        "unknown connector",
        out_dir=out,
    )


def test_seed_out_of_range(tmp_path, llava, vit):
    out = tmp_path / "o"
    result = run("upgrade", llava(), "-e", f"hf-vit:{vit()}", "-o", out, "--seed", 10**20)
    assert_clean_failure(result, "--seed must be in [0, 2**64 - 1]", out_dir=out)


def test_truncated_safetensors(tmp_path, llava, vit):
    src = tmp_path / "src"
    shutil.copytree(llava(), src)
    weights = src / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = tmp_path / "o"
    assert_clean_failure(run("upgrade", src, "-e", f"hf-vit:{vit()}", "-o", out), "safetensors", out_dir=out)


def test_pickle_only_checkpoint_is_refused(tmp_path, llava, vit):
    src = tmp_path / "src"
    shutil.copytree(llava(), src)
    (src / "model.safetensors").rename(src / "pytorch_model.bin")
    out = tmp_path / "o"
    assert_clean_failure(run("upgrade", src, "-e", f"hf-vit:{vit()}", "-o", out), "pickle", out_dir=out)


def test_encoder_failure_leaves_nothing(tmp_path, llava, vit):
    enc = tmp_path / "enc"
    shutil.copytree(vit("siglip"), enc)
    (enc / "model.safetensors").write_bytes(b"\x00" * 64)
    out = tmp_path / "o"
    result = run("upgrade", llava(), "-e", f"hf-vit:{enc}", "-o", out)
    assert_clean_failure(result, "corrupted or truncated safetensors file", str(enc / "model.safetensors"), out_dir=out)


def test_image_that_is_not_an_image(tmp_path, llava, vit):
    out = tmp_path / "up"
    assert run("upgrade", llava(), "-e", f"hf-vit:{vit()}", "-o", out).exit_code == 0
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert_clean_failure(run("generate", out, "--image", bad, "--prompt", "hi"), "not a readable image")
    assert_clean_failure(run("generate", out, "--image", tmp_path / "missing.png", "--prompt", "hi"), "image not found")


def test_placeholder_typed_in_the_prompt(tmp_path, llava, perceiver):
    out = tmp_path / "up"
    assert run("upgrade", llava(), "-e", f"perceiver:{perceiver()}", "-o", out).exit_code == 0
    image = tmp_path / "scene.png"
    make_scene(3).render().save(image)
    for token in ("<image>", "<|vision_start|>"):
        result = run("generate", out, "--image", image, "--prompt", f"what {token} is this?")
        assert_clean_failure(result, f"the prompt contains {token!r}", "--image")


@pytest.mark.parametrize("image_token_id", [99999, -5])
def test_image_token_outside_the_vocabulary(tmp_path, llava, vit, image_token_id):
    src = tmp_path / "src"
    shutil.copytree(llava(), src)
    config = json.loads((src / "config.json").read_text())
    config["image_token_index"] = image_token_id
    (src / "config.json").write_text(json.dumps(config))
    out = tmp_path / "o"
    result = run("upgrade", src, "-e", f"hf-vit:{vit()}", "-o", out)
    assert_clean_failure(result, f"image token id {image_token_id}", "its tokenizer does not have", out_dir=out)
    report = run("inspect", src, "--json")
    assert report.exit_code == 0 and json.loads(report.output)["image_token"] is None


def test_misspelt_catalog_ids_suggest_the_catalog_id(tmp_path, llava, perceiver):
    out = tmp_path / "o"
    for args, close in (
        (("upgrade", llava(), "-e", "perceiver:qwen3-vl-2bb", "-o", out), "qwen3-vl-2b"),
        (("build", "--llm", "qwen3-4bb", "-e", f"perceiver:{perceiver()}", "-o", out), "qwen3-4b"),
        (("inspect", "qwen3-4bb"), "qwen3-4b"),
    ):
        assert_clean_failure(run(*args), "not a catalog id (did you mean", f"{close},", out_dir=out)


def test_build_on_a_vlm_says_what_the_vlm_can_be(tmp_path, llava, perceiver, vit):
    out = tmp_path / "o"
    result = run("build", "--llm", perceiver(), "-e", f"hf-vit:{vit()}", "-o", out)
    assert_clean_failure(result, "not a bare LLM", "it can be the encoder", "perceiver:PATH", out_dir=out)
    assert "use `vlm-swap upgrade` for VLMs" not in result.output  # upgrade would refuse this layout
    result = run("build", "--llm", llava(), "-e", f"hf-vit:{vit()}", "-o", out)
    assert_clean_failure(result, "use `vlm-swap upgrade` for VLMs", out_dir=out)


def test_eval_names_only_options_it_has(tmp_path, llava):
    turns = [{"from": "human", "value": "what is it?"}, {"from": "gpt", "value": "a shape"}]
    data = tmp_path / "text.jsonl"
    data.write_text(json.dumps({"conversations": turns}) + "\n" + json.dumps({"conversations": "bad"}) + "\n")
    result = run("eval", llava(), "--text-data", data, "--json")
    assert_clean_failure(result, "line 2", "pass --skip-bad-rows")
    result = run("eval", llava(), "--text-data", data, "--json", "--skip-bad-rows")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["model"]["text"]["tokens"] > 0


def test_debug_shows_the_traceback(tmp_path, vit):
    result = run("--debug", "upgrade", tmp_path / "nope", "-e", f"hf-vit:{vit()}", "-o", tmp_path / "o")
    assert result.exit_code != 0 and result.exception is not None


def test_console_script_as_subprocess(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = cli_command()
    done = subprocess.run([*cmd, "list", "encoders", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert {"perceiver", "hf-vit"} <= set(json.loads(done.stdout))
    bad = subprocess.run(
        [*cmd, "inspect", str(tmp_path / "missing")], capture_output=True, text=True, env=env, timeout=120
    )
    assert bad.returncode != 0 and "path not found" in bad.stderr and "Traceback" not in bad.stderr


def _interrupt(cmd, env, ready) -> subprocess.CompletedProcess:
    """Start ``cmd``, press Ctrl-C (SIGINT) once ``ready(pid)`` holds, return what it printed."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_sigint_as_in_a_terminal
    )
    deadline = time.time() + 300
    while proc.poll() is None and not ready(proc.pid) and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _sigint_as_in_a_terminal() -> None:
    """The child's SIGINT has its default action, as in a command started from a terminal, also where this test
    runs with SIGINT ignored (a shell's background job passes that on, and Python then never raises
    KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _importing_torch(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as f:  # torch's library is mapped: the package import is under way
        return "libtorch" in f.read()


@pytest.mark.slow
def test_ctrl_c_while_starting_or_training_is_one_line(tmp_path, llava, vit):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # inspecting a path imports torch (listings import nothing heavy, so they start too fast to interrupt)
    done = _interrupt([*cli_command(), "inspect", str(tmp_path / "missing")], env, _importing_torch)
    assert done.returncode == 130 and done.stderr.strip() == "interrupted while starting; nothing was done", done

    up = tmp_path / "up"
    assert run("upgrade", llava(), "-e", f"hf-vit:{vit()}", "-o", up).exit_code == 0
    data = write_dataset(tmp_path / "data", 8, seed=3)
    run_dir = tmp_path / "run"
    cmd = [*cli_command(), "train", "tiny-cpu", "--model", str(up), "--data", str(data), "--images",
           str(data.parent), "--out", str(run_dir)]  # fmt: skip
    done = _interrupt(cmd, env, lambda _: (run_dir / "recipe.yaml").is_file())  # the run has started
    assert done.returncode == 130 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "interrupted; continue from the newest complete checkpoint: the same command with --resume"
    ), done.stderr
    assert not (run_dir / LOCK_NAME).exists()  # released on the way out


def test_train_and_merge_bad_input(tmp_path, llava, vit):
    up = tmp_path / "up"
    assert run("upgrade", llava(), "-e", f"hf-vit:{vit()}", "-o", up).exit_code == 0
    run_dir = tmp_path / "run"
    assert_clean_failure(
        run("train", "tiny-cpu", "--model", up, "--data", tmp_path / "missing.json", "--out", run_dir),
        "data file not found",
    )
    assert_clean_failure(
        run("train", "tiny-cpu", "--model", tmp_path / "nope", "--data", tmp_path / "d.json", "--out", run_dir),
        "path not found",
    )
    assert_clean_failure(
        run(
            "train",
            "tiny-cpu",
            "--model",
            up,
            "--data",
            tmp_path / "d.json",
            "--out",
            run_dir,
            "--set",
            "stages.align.steps=0",
        ),
        "steps/epochs must be positive",
    )
    assert not run_dir.exists()
    assert_clean_failure(
        run("merge", up, "--out", tmp_path / "merged"), "holds no LoRA adapter", out_dir=tmp_path / "merged"
    )
