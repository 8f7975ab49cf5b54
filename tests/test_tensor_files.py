"""Streaming safetensors: validated source headers, shards written piece by piece, byte copies."""

from __future__ import annotations

import json
import shutil
import struct
import threading
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import vlm_swap
from vlm_swap.checkpoints.shards import COPY_ALIGN, ShardWriter
from vlm_swap.checkpoints.tensors import SourceTensor, read_safetensors_header, safetensors_tensors
from vlm_swap.errors import VlmSwapError
from vlm_swap.surgery.layouts import SOURCES

from .helpers import read_tensors


@pytest.fixture
def st_file(tmp_path):
    torch.manual_seed(0)
    tensors = {
        "a": torch.randn(7, 5, dtype=torch.bfloat16),
        "b": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "c": torch.tensor(3.5),
        "d": torch.randn(4, 3, 2),
        "e": torch.zeros(0, 4),
        "f": torch.tensor([True, False, True]),
    }
    path = tmp_path / "src.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path, tensors


def test_header_matches_the_library(st_file):
    path, tensors = st_file
    header = read_safetensors_header(path)
    assert set(header) == set(tensors)
    with safe_open(str(path), framework="pt") as st:
        for name, info in header.items():
            t = st.get_tensor(name)
            assert info.torch_dtype == t.dtype and info.shape == tuple(t.shape)
            assert info.nbytes == t.numel() * t.element_size()
    raw = path.read_bytes()
    for name, info in header.items():  # absolute offsets: the bytes there are the tensor's bytes
        t = tensors[name].reshape(-1)
        assert raw[info.start : info.start + info.nbytes] == t.view(torch.uint8).numpy().tobytes()


def test_rows_are_read_lazily_and_exactly(st_file):
    path, tensors = st_file
    src = safetensors_tensors(path)
    assert torch.equal(src["a"].read_rows(2, 6), tensors["a"][2:6])
    assert torch.equal(src["d"].read_rows(0, 4), tensors["d"])
    assert torch.equal(src["c"].read_rows(0, 1), tensors["c"])
    mem = SourceTensor.in_memory(tensors["a"])
    assert mem.raw is None and torch.equal(mem.read_rows(1, 3), tensors["a"][1:3])


def test_rows_of_a_file_truncated_after_its_header_was_read_fail_in_one_line(tmp_path, st_file):
    path, tensors = st_file
    src = safetensors_tensors(path)  # header read and checked
    path.write_bytes(path.read_bytes()[: src["a"].raw.offset + 4])  # then the file shrinks
    with pytest.raises(VlmSwapError, match="truncated"):
        src["a"].read_rows(0, 7)
    assert torch.equal(src["a"].read_rows(0, 0), tensors["a"][:0])


def test_writer_mixes_tensors_byte_ranges_and_blocks(tmp_path, st_file):
    path, tensors = st_file
    src = safetensors_tensors(path)
    out = tmp_path / "out"
    out.mkdir()
    w = ShardWriter(out, max_bytes=100)
    for name in ("a", "b", "c", "e", "f"):
        w.add_stream(f"copy.{name}", src[name].dtype, src[name].shape, lambda t=src[name]: (t.raw,))
    w.add("mem.d", tensors["d"])
    d = src["d"]
    w.add_stream("blocks.d", torch.float16, d.shape, lambda: (d.read_rows(i, i + 1).half() for i in range(4)))
    files = w.close()
    assert len(files) > 1 and (out / "model.safetensors.index.json").is_file()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == w.total_bytes
    got = {}
    for f in files:
        n = struct.unpack("<Q", f.read_bytes()[:8])[0]
        assert n % 8 == 0  # data 8-byte aligned, header padded with spaces
        got.update(load_file(str(f)))
        with safe_open(str(f), framework="pt") as st:
            assert st.metadata() == {"format": "pt"}
            assert all(index["weight_map"][k] == f.name for k in st.keys())
    for name in ("a", "b", "c", "e", "f"):
        assert torch.equal(got[f"copy.{name}"], tensors[name]) and got[f"copy.{name}"].dtype == tensors[name].dtype
    assert torch.equal(got["mem.d"], tensors["d"])
    assert torch.equal(got["blocks.d"], tensors["d"].half())


def _holds(path, tensors) -> bool:
    try:
        got = load_file(str(path))
    except Exception:  # header or data not complete yet
        return False
    return all(k in got and torch.equal(got[k], v) for k, v in tensors.items())


def test_flushed_shards_are_written_in_the_background_and_named_at_close(tmp_path):
    first = {f"a.{i}": torch.full((3, 4), float(i)) for i in range(3)}
    gate, w = threading.Event(), ShardWriter(tmp_path, workers=2)
    for name, t in first.items():
        w.add(name, t)
    w.end_shard()
    w.add_stream("late", torch.float32, (2,), lambda: (gate.wait(10), torch.ones(2))[1:])
    w.flush()  # the first shard only: "late" is in the open shard, written at close
    part = tmp_path / "part-00001.safetensors"  # its working name until close
    deadline = time.monotonic() + 30
    try:
        # whole before close: the workers write tensors at their offsets in any order, so the file can
        # reach its full size before every tensor is in; wait for the content itself
        while not _holds(part, first):
            assert time.monotonic() < deadline, "the flushed shard was not written in the background"
            time.sleep(0.01)
        assert [f.name for f in tmp_path.iterdir()] == [part.name]
    finally:
        gate.set()  # a failed check must not leave the writer's threads waiting (they would outlive this test)
    w.add("b", torch.zeros(5))
    files = w.close()
    assert [f.name for f in files] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert not list(tmp_path.glob("part-*"))
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    assert {k for k, v in index.items() if v == files[0].name} == set(first)
    got = read_tensors(tmp_path)
    assert all(torch.equal(got[k], v) for k, v in first.items())
    assert torch.equal(got["late"], torch.ones(2)) and torch.equal(got["b"], torch.zeros(5))


def test_leaving_the_writer_by_an_exception_cancels_what_has_not_started(tmp_path):
    started, gate = [], threading.Event()

    def pieces(name):
        started.append(name)
        gate.wait(10)
        return (torch.zeros(4),)

    with pytest.raises(RuntimeError, match="stop"), ShardWriter(tmp_path, workers=1) as w:
        for i in range(5):
            w.add_stream(f"t{i}", torch.float32, (4,), lambda i=i: pieces(f"t{i}"))
        w.end_shard()
        w.flush()
        while not started:
            time.sleep(0.01)
        threading.Timer(0.2, gate.set).start()  # the running tensor finishes only after the exit began
        raise RuntimeError("stop")
    assert started == ["t0"]  # the queued ones never ran, the running one was waited for
    assert not [t for t in threading.enumerate() if t.name.startswith("shard-writer")]  # the workers are gone


def test_writer_refuses_a_piece_of_the_wrong_size(tmp_path):
    w = ShardWriter(tmp_path)
    w.add_stream("x", torch.float32, (4,), lambda: (torch.zeros(3),))
    with pytest.raises(RuntimeError, match="wrote 12 bytes, its header says 16"):
        w.close()


def _corrupt(path, how):
    raw = bytearray(path.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    if how == "truncated":
        return bytes(raw[: len(raw) - 10])
    if how == "trailing":
        return bytes(raw) + b"\0" * 8
    if how == "tiny":
        return bytes(raw[:5])
    if how == "huge-header":
        return struct.pack("<Q", 1 << 40) + bytes(raw[8:])
    if how == "not-json":
        return bytes(raw[:8]) + b"{" + b"x" * (n - 1) + bytes(raw[8 + n :])
    if how == "size":
        header["a"]["shape"] = [8, 5]
    elif how == "overlap":
        start = header["a"]["data_offsets"][0]
        header["b"]["data_offsets"] = [start, start + 48]  # b's own size, on top of a's bytes
    elif how == "dtype":
        header["a"]["dtype"] = "Q7"
    elif how == "malformed":
        header["a"]["shape"] = [-1, 5]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + bytes(raw[8 + n :])


@pytest.mark.parametrize(
    "how,match",
    [
        ("truncated", "truncated"),
        ("trailing", "trailing bytes"),
        ("tiny", "shorter than the 8-byte header length"),
        ("huge-header", "does not fit"),
        ("not-json", "not valid JSON"),
        ("size", "dtype and shape need"),
        ("overlap", "overlap or gap"),
        ("dtype", "unsupported dtype 'Q7'"),
        ("malformed", "malformed entry"),
    ],
)
def test_corrupt_headers_give_one_line_naming_the_file(st_file, how, match):
    path, _ = st_file
    path.write_bytes(_corrupt(path, how))
    with pytest.raises(VlmSwapError, match=match) as err:
        read_safetensors_header(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_corrupt_later_shard_fails_before_writing(tmp_path, llava, vit):
    src = tmp_path / "src"
    shutil.copytree(llava(), src)
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(src)
    (src / "model.safetensors").unlink()
    model.save_pretrained(src, max_shard_size="100KB")
    shards = sorted(src.glob("model-*.safetensors"))
    assert len(shards) >= 3
    shards[-1].write_bytes(shards[-1].read_bytes()[:-100])
    out = tmp_path / "o"
    with pytest.raises(VlmSwapError, match=f"truncated safetensors file {shards[-1]}"):
        vlm_swap.upgrade(str(src), f"hf-vit:{vit()}", out)
    assert not out.exists() and not list(tmp_path.glob(".o.*"))


def test_sharded_source_cast_and_grown_rows(tmp_path, llava, perceiver):
    src = tmp_path / "src"
    shutil.copytree(llava(), src)
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(src)
    (src / "model.safetensors").unlink()
    model.save_pretrained(src, max_shard_size="100KB")
    out = vlm_swap.upgrade(str(src), f"perceiver:{perceiver()}", tmp_path / "o", dtype="bfloat16")
    src_t, out_t = read_tensors(src), read_tensors(out)
    adapter = SOURCES.get("llava")
    grown = 0
    for key, t in src_t.items():
        if adapter.part_of(key) != "llm":
            continue
        got = out_t["language_model." + adapter.llm_key(key)]
        assert got.dtype == torch.bfloat16
        assert torch.equal(got[: t.shape[0]], t.to(torch.bfloat16)), key
        if got.shape[0] > t.shape[0]:
            grown += 1
            mean = t.double().mean(0).float().to(torch.bfloat16).expand(got.shape[0] - t.shape[0], -1)
            torch.testing.assert_close(got[t.shape[0] :], mean, rtol=2**-7, atol=1e-6)  # one bfloat16 step
    assert grown == 2  # embed_tokens and lm_head (llama2 does not tie them)


def test_copied_tensors_keep_their_offset_modulo_64k_and_shards_follow_the_source(tmp_path, llava, vit):
    src = tmp_path / "src"
    shutil.copytree(llava(), src)
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(src)
    (src / "model.safetensors").unlink()
    model.save_pretrained(src, max_shard_size="100KB")
    out = vlm_swap.upgrade(str(src), f"hf-vit:{vit()}", tmp_path / "o")  # no added token: all LLM bytes copied
    adapter = SOURCES.get("llava")
    where = {}
    for f in sorted(src.glob("model-*.safetensors")):
        for key, info in read_safetensors_header(f).items():
            if adapter.part_of(key) == "llm":
                where["language_model." + adapter.llm_key(key)] = (f.name, info.start)
    *llm_shards, last = sorted(out.glob("model-*.safetensors"))
    sources_of = []
    for f in llm_shards:
        header = read_safetensors_header(f)
        assert min(i.start for i in header.values()) % 8 == 0  # data 8-byte aligned
        assert set(header) <= set(where)
        sources_of.append({where[k][0] for k in header})
        for k in header:
            assert (header[k].start - where[k][1]) % COPY_ALIGN == 0, k
    assert all(len(s) == 1 for s in sources_of)  # an output shard holds the LLM tensors of one source shard
    # every LLM tensor is copied from its source shard; the encoder and connector come in a last shard
    assert {n for s in sources_of for n in s} == {n for n, _ in where.values()}
    assert sum(len(read_safetensors_header(f)) for f in llm_shards) == len(where)
    assert all(k.startswith(("encoder.", "connector.")) for k in read_safetensors_header(last))
    torch.testing.assert_close(read_tensors(out)["language_model.lm_head.weight"], model.lm_head.weight.detach())
