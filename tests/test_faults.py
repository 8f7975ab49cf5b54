"""Faults while writing or reading: kill -9 mid-upgrade, corrupted safetensors, unwritable destinations, a full disk.

Each test names the fault it injects. What must hold: a one-line error (no traceback), no half-written
output, a previous output left intact, and the next run cleaning what a killed run left and succeeding.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import vlm_swap
import vlm_swap.zoo
from vlm_swap.checkpoints.tensors import read_safetensors_header
from vlm_swap.cli import app
from vlm_swap.errors import VlmSwapError

from .helpers import cli_command

runner = CliRunner()


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def leftovers(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.*-*"))


def assert_clean_failure(result, *fragments, out: Path):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    for frag in fragments:
        assert frag in result.output, result.output
    assert not out.exists() and not leftovers(out)


def upgrade_cmd(source, encoder, out, *extra) -> tuple[list[str], dict]:
    cmd = [*cli_command(), "upgrade", str(source), "-e", f"hf-vit:{encoder}", "-o", str(out), *extra]
    return cmd, {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}


# ---- kill -9 at deterministic points of `vlm-swap upgrade` ------------------------------------------


def _temporary(out: Path) -> Path | None:
    found = list(out.parent.glob(f".{out.name}.tmp-*"))
    return found[0] if found else None


POINTS = {
    "temporary created": lambda out: _temporary(out) is not None,
    "weights written": lambda out: (tmp := _temporary(out)) is not None and any(tmp.glob("*.safetensors")),
}


@pytest.mark.parametrize("point,previous", [("temporary created", False), ("weights written", True)])
def test_kill_9_during_upgrade_then_the_next_run_succeeds(tmp_path, llava, vit, point, previous):
    """Fault: SIGKILL of `vlm-swap upgrade` once POINT is reached (with or without a previous output)."""
    out = tmp_path / "up"
    before = digest(vlm_swap.upgrade(str(llava()), f"hf-vit:{vit()}", out)) if previous else None
    cmd, env = upgrade_cmd(llava(), vit("siglip"), out, "--force")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while not POINTS[point](out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the upgrade ended before it could be killed"
    assert _temporary(out) is not None  # killed mid-write: its temporary is still there
    if previous:
        assert digest(out) == before  # the previous output is intact
    else:
        assert not out.exists()  # nothing half-written in its place

    again = vlm_swap.upgrade(str(llava()), f"hf-vit:{vit('siglip')}", out, force=previous)
    assert not leftovers(out)  # the killed run's temporary was cleaned
    assert "siglip" in json.loads((again / "config.json").read_text())["encoder_config"]["model_type"]


def test_a_kill_between_the_two_renames_of_a_replacement_loses_nothing(tmp_path, llava, vit):
    """Fault: the state a kill leaves between moving the previous output aside and moving the new one in."""
    out = vlm_swap.upgrade(str(llava()), f"hf-vit:{vit()}", tmp_path / "up")
    before = digest(out)
    dead = subprocess.Popen(["true"])
    dead.wait()
    os.rename(out, out.parent / f".up.old-{dead.pid}-0badf00d")
    shutil.copytree(out.parent / f".up.old-{dead.pid}-0badf00d", out.parent / f".up.tmp-{dead.pid}-0badf00d")
    with pytest.raises(VlmSwapError, match="not empty"):  # the previous output is back, so --force is needed
        vlm_swap.upgrade(str(llava()), f"hf-vit:{vit()}", out)
    assert digest(out) == before and not leftovers(out)


# ---- corrupted safetensors: one line, nothing written -------------------------------------------------


def _header(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_header_bit(path: Path) -> None:
    """One bit flipped in the header JSON: the first quote becomes '#'."""
    data = bytearray(path.read_bytes())
    data[8 + data[8:].index(b'"')] ^= 0x01
    path.write_bytes(bytes(data))


def offsets_beyond_file(path: Path) -> None:
    """A consistent header whose last tensor is one row longer than the bytes the file holds."""
    header, body = _header(path)
    name = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    info = header[name]
    row = (info["data_offsets"][1] - info["data_offsets"][0]) // info["shape"][0]
    info["shape"][0] += 1
    info["data_offsets"][1] += row
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


@pytest.mark.parametrize("part", ["source", "encoder"])
@pytest.mark.parametrize("corrupt", [truncate, flip_header_bit, offsets_beyond_file], ids=lambda f: f.__name__)
def test_corrupted_safetensors_fail_in_one_line_and_write_nothing(tmp_path, llava, vit, part, corrupt):
    src, enc = tmp_path / "src", tmp_path / "enc"
    shutil.copytree(llava(), src)
    shutil.copytree(vit(), enc)
    corrupted = (src if part == "source" else enc) / "model.safetensors"
    corrupt(corrupted)
    out = tmp_path / "o"
    result = runner.invoke(app, ["upgrade", str(src), "-e", f"hf-vit:{enc}", "-o", str(out)])
    assert_clean_failure(result, "corrupted or truncated safetensors file", str(corrupted), out=out)


def test_truncated_shards_and_adapters_fail_in_one_line_in_export_merge_and_load(tmp_path, llava, vit):
    """Fault: the last shard of an upgraded model, and the adapter of a LoRA run, cut in half. Every
    command that reads or copies them refuses in one line before writing (remote-code used to copy it)."""
    up = tmp_path / "up"
    vlm_swap.upgrade(str(llava()), f"hf-vit:{vit()}", up)
    truncate(sorted(up.glob("model-*.safetensors"))[-1])
    for fmt in ("remote-code", "llava"):
        out = tmp_path / f"export-{fmt}"
        result = runner.invoke(app, ["export", str(up), "--format", fmt, "--out", str(out)])
        assert_clean_failure(result, "corrupted or truncated safetensors file", "model-00002", out=out)

    good = tmp_path / "good"
    vlm_swap.upgrade(str(llava()), f"hf-vit:{vit()}", good)
    run = tmp_path / "run"  # what a LoRA run holds at its root, its adapter cut by a full disk or a copy
    run.mkdir()
    (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(good), "peft_type": "LORA"}))
    from safetensors.torch import save_file

    save_file({"base_model.model.connector.0.weight": torch.zeros(64, 64)}, str(run / "adapter_model.safetensors"))
    truncate(run / "adapter_model.safetensors")
    out = tmp_path / "merged"
    result = runner.invoke(app, ["merge", str(run), "--out", str(out)])
    assert_clean_failure(result, "corrupted or truncated safetensors file", "adapter_model.safetensors", out=out)
    image = tmp_path / "x.png"
    vlm_swap.zoo.make_scene(1).render().save(image)
    result = runner.invoke(app, ["generate", str(run), "--image", str(image), "--prompt", "hi"])
    assert_clean_failure(result, "adapter_model.safetensors", out=tmp_path / "nothing")


# ---- destinations that cannot be written ------------------------------------------------------------


def unwritable_destinations(tmp_path: Path) -> list[Path]:
    """Parents nobody may write to: a read-only dir (not for root, who ignores modes), a file, /proc."""
    afile = tmp_path / "afile"
    afile.write_text("a file where a folder should be")
    places = [afile / "out", Path("/proc/vlm-swap-test/out")]
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        places.append(locked / "out")
    return places


def test_unwritable_destinations_fail_in_one_line(tmp_path, llava, vit):
    """Fault: the output's parent cannot be written (read-only mode, a file in its place, /proc)."""
    for out in unwritable_destinations(tmp_path):
        result = runner.invoke(app, ["upgrade", str(llava()), "-e", f"hf-vit:{vit()}", "-o", str(out)])
        assert result.exit_code != 0 and "Traceback" not in result.output, result.output
        assert "cannot write to" in result.output and len(result.output.strip().splitlines()) == 1, result.output
        assert not out.exists()


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory on a read-only file system (a tmpfs mounted read-only; needs the right to mount)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a read-only file system here")
    yield ro
    subprocess.run(["umount", str(ro)], check=True)


def test_a_read_only_file_system_is_named_as_such_before_any_work(read_only_dir, tmp_path, llava, vit):
    """Fault: the output lies on a read-only file system (it used to read 'permission denied', and eval
    named its internal temporary file after scoring everything)."""
    out = read_only_dir / "up"
    result = runner.invoke(app, ["upgrade", str(llava()), "-e", f"hf-vit:{vit()}", "-o", str(out)])
    assert_clean_failure(result, "read-only file system", out=out)
    turns = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]
    data = tmp_path / "t.jsonl"
    data.write_text(json.dumps({"conversations": turns}) + "\n")
    report = read_only_dir / "scores.json"
    result = runner.invoke(app, ["eval", str(llava()), "--text-data", str(data), "--out", str(report)])
    assert_clean_failure(result, f"cannot write to {read_only_dir}: a read-only file system", out=report)
    assert ".tmp-" not in result.output


def test_a_failed_write_names_the_file_not_its_temporary(read_only_dir):
    from vlm_swap.checkpoints.atomic import write_json

    with pytest.raises(VlmSwapError, match=rf"read-only file system while writing {read_only_dir / 'x.json'}"):
        write_json(read_only_dir / "x.json", {"a": 1})


def _file_size_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write over the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_pair_check_failing_while_the_llm_is_copied_keeps_the_previous_output(tmp_path, llava, vit):
    """Fault: the pair checks run while the LLM tensors are already being copied; one fails (a context
    too short for the image rows): the copy stops, the previous output stays as it was."""
    out = vlm_swap.upgrade(str(llava()), f"hf-vit:{vit()}", tmp_path / "up")
    before = digest(out)
    src = tmp_path / "short"
    shutil.copytree(llava(), src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["text_config"]["max_position_embeddings"] = 16
    (src / "config.json").write_text(json.dumps(cfg))
    result = runner.invoke(app, ["upgrade", str(src), "-e", f"hf-vit:{vit()}", "-o", str(out), "--force"])
    assert result.exit_code != 0 and "incompatible pair" in result.output, result.output
    assert digest(out) == before and not leftovers(out)


def test_a_full_disk_fails_in_one_line_and_keeps_the_previous_output(tmp_path, llava, vit):
    """Fault: a file-size limit (RLIMIT_FSIZE) smaller than the weights, as a full disk would be."""
    out = vlm_swap.upgrade(str(llava()), f"hf-vit:{vit()}", tmp_path / "up")
    before = digest(out)
    cmd, env = upgrade_cmd(llava(), vit(), out, "--force")
    limit = max(f.stat().st_size for f in out.glob("*.safetensors")) // 2
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, preexec_fn=_file_size_limit(limit))
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "file too large" in done.stderr and str(out) in done.stderr, done.stderr
    assert digest(out) == before and not leftovers(out)


def test_a_full_disk_while_the_encoder_is_copied_keeps_the_previous_output(tmp_path, llava, perceiver):
    """Fault: the disk fills while the encoder's tensors are copied from its checkpoint, after the LLM's shard was
    written whole: a file-size limit between the LLM shard's size and the encoder shard's."""
    out = vlm_swap.upgrade(str(llava()), f"perceiver:{perceiver()}", tmp_path / "up")
    before = digest(out)
    weight_map = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    encoder_shards = {name for key, name in weight_map.items() if key.startswith("encoder.")}
    assert len(encoder_shards) == 1  # the encoder's tensors in a shard of their own (with the connector)
    shard = encoder_shards.pop()
    sizes = {name: (out / name).stat().st_size for name in set(weight_map.values())}
    encoder_size = sizes.pop(shard)
    limit = (max(sizes.values()) + encoder_size) // 2
    header = read_safetensors_header(out / shard)
    connector_start = min(t.start for k, t in header.items() if k.startswith("connector."))
    assert max(sizes.values()) < limit < connector_start  # the limit falls among the encoder's bytes
    cmd = [*cli_command(), "upgrade", str(llava()), "-e", f"perceiver:{perceiver()}", "-o", str(out), "--force"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, preexec_fn=_file_size_limit(limit))
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "file too large" in done.stderr and str(out) in done.stderr, done.stderr
    assert digest(out) == before and not leftovers(out)
