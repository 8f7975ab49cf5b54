"""The data index: exact token counts from image sizes, every input format, safe paths, the cache."""

from __future__ import annotations

import io
import json
import struct
import zlib

import pytest
from PIL import Image

import vlm_swap
from vlm_swap.data import DataError, SampleEncoder, SwapDataset, formats, index, load_dataset
from vlm_swap.zoo.world import make_scene

SIZES = [(96, 64), (64, 128), (160, 160), (500, 375), (33, 270), (700, 90)]
ENCODERS = [
    *[f"perceiver:{f}" for f in ("qwen3_vl", "qwen2_5_vl", "qwen2_vl", "idefics3", "llava_onevision", "gemma3")],
    *[f"hf-vit:{k}" for k in ("clip", "siglip", "siglip2")],
    "timm:timm",
    "open-clip:open-clip",
]


def _row(name: str, question: str = "what is it?", answer: str = "a red circle") -> dict:
    return {
        "image": name,
        "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}],
    }


def _images(root, sizes=SIZES) -> list[str]:
    (root / "images").mkdir(parents=True, exist_ok=True)
    names = []
    for i, size in enumerate(sizes):
        name = f"images/{i}.png"
        make_scene(i, size).render().save(root / name)
        names.append(name)
    return names


@pytest.fixture(scope="module")
def source(llava):
    return str(llava("llama2", "clip"))


@pytest.fixture(scope="module")
def qwen(tmp_path_factory, source, perceiver):
    _, processor = vlm_swap.load(
        vlm_swap.upgrade(source, f"perceiver:{perceiver()}", tmp_path_factory.mktemp("q") / "up")
    )
    return processor


@pytest.mark.parametrize("spec", ENCODERS)
def test_index_token_counts_equal_the_full_encode(tmp_path, source, perceiver, vit, vision_lib, spec):
    kind, name = spec.split(":")
    encoder_dir = {"perceiver": perceiver, "hf-vit": vit}.get(kind, lambda n: vision_lib(n))(name)
    _, processor = vlm_swap.load(vlm_swap.upgrade(source, f"{kind}:{encoder_dir}", tmp_path / "up"))
    data = tmp_path / "data.jsonl"
    rows = [_row(n, answer="yes " * (i + 1)) for i, n in enumerate(_images(tmp_path))]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    encoder = SampleEncoder(processor, 4096)
    samples, report = load_dataset(data, tmp_path, encoder)
    assert report.kept == len(SIZES)
    counted = [s.length for s in samples]
    assert counted == [len(encoder(s)["input_ids"]) for s in samples]
    if kind == "perceiver" and name != "gemma3":
        assert len(set(counted)) > 3  # rows follow the image size: the counts are not one constant


def _formats(tmp_path, names):
    """The same rows as a pretty-printed JSON array, JSONL, messages JSONL, parquet and a datasets dir
    (the last two with the images' bytes in the table)."""
    import datasets

    rows = [_row(n, f"question {i}?", f"answer {i}") for i, n in enumerate(names)]
    out = {}
    (tmp_path / "a.json").write_text(json.dumps(rows, indent=2))
    out["json"] = tmp_path / "a.json"
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out["jsonl"] = tmp_path / "a.jsonl"
    messages = [
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image", "image": n}, {"type": "text", "text": f"question {i}?"}],
                },
                {"role": "assistant", "content": f"answer {i}"},
            ]
        }
        for i, n in enumerate(names)
    ]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in messages))
    out["messages"] = tmp_path / "m.jsonl"
    table = {
        "image": [{"bytes": (tmp_path / n).read_bytes(), "path": None} for n in names],
        "conversations": [r["conversations"] for r in rows],
    }
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "conversations": [{"from": datasets.Value("string"), "value": datasets.Value("string")}],
        }
    )
    ds = datasets.Dataset.from_dict(table, features=features)
    ds.to_parquet(str(tmp_path / "a.parquet"))
    out["parquet"] = tmp_path / "a.parquet"
    ds.save_to_disk(str(tmp_path / "saved"))
    out["datasets"] = tmp_path / "saved"
    return out


def test_every_format_gives_the_same_samples(tmp_path, qwen, monkeypatch):
    monkeypatch.setattr(formats, "CHUNK_CHARS", 64)  # the JSON array crosses many buffer boundaries
    names = _images(tmp_path)
    encoder = SampleEncoder(qwen, 4096)
    encoded = {}
    for fmt, path in _formats(tmp_path, names).items():
        samples, report = load_dataset(path, tmp_path, encoder)
        assert report.kept == len(names) and [s.line for s in samples][-1] == (
            len(names) if fmt != "json" else len(names)
        ), fmt
        encoded[fmt] = [encoder(s)["input_ids"].tolist() for s in samples]
        assert [s.length for s in samples] == [len(e) for e in encoded[fmt]]
    assert all(v == encoded["json"] for v in encoded.values())
    assert any(isinstance(s.images[0], bytes) for s in load_dataset(tmp_path / "a.parquet", tmp_path, encoder)[0])


def test_the_parallel_build_equals_the_serial_one(tmp_path, qwen, monkeypatch):
    names = _images(tmp_path) * 3
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(_row(n, answer="no " * (i + 1))) + "\n" for i, n in enumerate(names)))
    data.write_text(data.read_text() + "{broken\n")
    encoder = SampleEncoder(qwen, 4096)
    serial, report = load_dataset(data, tmp_path, encoder, on_bad_rows="skip", workers=1)
    monkeypatch.setattr(index, "ROWS_PER_PROCESS", 2)
    monkeypatch.setenv("VLM_SWAP_CACHE", str(tmp_path / "other-cache"))
    parallel, report2 = load_dataset(data, tmp_path, encoder, on_bad_rows="skip", workers=2)
    assert len(list((tmp_path / "other-cache" / "index").glob("*/index_*_of_00002.arrow"))) == 2
    assert [s.length for s in parallel] == [s.length for s in serial] and report2.bad == report.bad == [
        (19, "bad JSON (Expecting property name enclosed in double quotes)")
    ]


def test_image_paths_may_not_leave_the_images_folder(tmp_path, qwen):
    root = tmp_path / "set"
    names = _images(root, SIZES[:1])
    make_scene(9, (64, 64)).render().save(tmp_path / "outside.png")
    rows = [_row(names[0]), _row("../outside.png"), _row(str(tmp_path / "outside.png")), _row("/etc/passwd")]
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    encoder = SampleEncoder(qwen, 4096)
    with pytest.raises(DataError) as err:
        load_dataset(data, root, encoder)
    for line, path in ((2, "../outside.png"), (3, tmp_path / "outside.png"), (4, "/etc/passwd")):
        assert f"line {line}: image path {path} resolves outside the images folder" in str(err.value)
    samples, report = load_dataset(data, root, encoder, allow_absolute_paths=True, on_bad_rows="skip")
    assert [s.line for s in samples] == [1, 2, 3]
    assert report.bad == [(4, "not a readable image: /etc/passwd (UnidentifiedImageError)")]


def _huge_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (its pixels are never decoded)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


def test_bad_images_are_bad_rows_with_their_line(tmp_path, qwen):
    names = _images(tmp_path, SIZES[:1])
    Image.new("RGB", (4000, 3)).save(tmp_path / "images" / "wide.png")
    (tmp_path / "images" / "bomb.png").write_bytes(_huge_png(10000, 10000))
    (tmp_path / "images" / "text.png").write_text("not an image")
    rows = [_row(names[0]), _row("images/wide.png"), _row("images/bomb.png"), _row("images/text.png")]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(rows))
    with pytest.raises(DataError) as err:
        load_dataset(data, tmp_path, SampleEncoder(qwen, 4096))
    msg = str(err.value)
    assert "3 bad rows" in msg and "\n" not in msg
    assert "line 2: the image processor refuses a 4000x3 image: absolute aspect ratio must be smaller than 200" in msg
    assert "line 3: image" in msg and "10000x10000, over the 64,000,000-pixel budget" in msg
    assert "line 4: not a readable image" in msg
    samples, report = load_dataset(data, tmp_path, SampleEncoder(qwen, 4096), on_bad_rows="skip")
    assert [s.line for s in samples] == [1] and report.malformed == 3


def test_the_index_is_cached_and_rebuilt_when_its_inputs_change(tmp_path, qwen, monkeypatch):
    names = _images(tmp_path, SIZES[:3])
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(_row(n)) + "\n" for n in names))
    builds = []
    build = index._build
    monkeypatch.setattr(index, "_build", lambda *a, **k: builds.append(1) or build(*a, **k))
    first, _ = load_dataset(data, tmp_path, SampleEncoder(qwen, 4096))
    again, _ = load_dataset(data, tmp_path, SampleEncoder(qwen, 128))  # max_length is applied at load, not indexed
    assert len(builds) == 1 and [s.length for s in again] == [min(s.length, 128) for s in first]
    data.write_text(data.read_text() + json.dumps(_row(names[0])) + "\n")
    grown, _ = load_dataset(data, tmp_path, SampleEncoder(qwen, 4096))
    assert len(builds) == 2 and len(grown) == 4


def test_a_sample_that_fails_to_decode_is_skipped_and_counted(tmp_path, qwen):
    names = _images(tmp_path, SIZES[:3])
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(_row(n)) + "\n" for n in names))
    encoder = SampleEncoder(qwen, 4096)
    samples, _ = load_dataset(data, tmp_path, encoder)
    png = (tmp_path / names[1]).read_bytes()
    (tmp_path / names[1]).write_bytes(png[: len(png) // 2])  # truncated after indexing
    dataset = SwapDataset(samples, encoder)
    item = dataset[1]
    assert item["skipped"] == [2]
    assert item["input_ids"].tolist() == encoder(samples[2])["input_ids"].tolist()  # the next sample stood in
    assert dataset.decodes.value == 2
