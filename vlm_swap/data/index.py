"""The data index: every row validated once and cheaply, with its exact token count, cached on disk.

Building it reads each row, checks its structure, that each image exists and decodes from its
header (size and mode; no pixels are decoded), and lays out its tokens exactly as the full encode
would (``encoding.SampleEncoder.layout``) with each image's rows counted from its size
(``encoding.ImageRows``). Text is tokenized by the fast tokenizer in batches. The result is an
Arrow table (🤗 ``datasets``: memory-mapped, built with ``map(num_proc=...)``) with, per row, its
line number, its normalised messages, its images, its untruncated length, where its last image
ends and where its first answer token is; or the error that makes it unusable. Too-long rows are
decided when the index is loaded (``samples.load_dataset``), for the stage's ``max_length``, so the
index does not depend on it: one index serves every stage and every ``max_length``.

The cache lives under ``$VLM_SWAP_CACHE`` (default ``~/.cache/vlm-swap``) in ``index/<key>``, the
key a hash of the data file (path, size, modification time), the images folder, the processor and
tokenizer, the row options and the index version. A second ``vlm-swap train`` or a ``--resume``
memory-maps it in well under a second. Under torchrun or accelerate, the first process to take the
key's file lock builds and the others wait on the lock, then read: no collective runs, so a long
build meets no process-group timeout (the process group is created after the data is loaded).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import VlmSwapError
from ..images import image_header
from .encoding import ImageRows, SampleEncoder
from .formats import DataError, RowError, iter_text_rows, loads_row, parse_row, source_kind

INDEX_VERSION = 1
BATCH = 256  # rows per map batch (one batched tokenizer call)
ROWS_PER_PROCESS = 2000  # fewer rows per map process than this and a process pool costs more than it saves
_PROGRESS = None  # rows indexed so far: a shared counter, inherited by the forked map workers


def _features():
    from datasets import Features, List, Value

    return Features(
        {
            "line": Value("int64"),
            "messages": Value("string"),  # JSON of the normalised messages; null for a bad row
            "images": List({"path": Value("string"), "bytes": Value("binary")}),
            "options": List(Value("string")),
            "length": Value("int32"),  # tokens before truncation
            "image_end": Value("int32"),  # tokens up to the end of the last image (-1 without images)
            "first_label": Value("int32"),  # position of the first trained token
            "error": Value("string"),  # why the row is unusable; null when usable
        }
    )


# ---- building -------------------------------------------------------------------------------


@dataclass
class _Context:
    """What a map worker needs to index a batch (pickled once per worker)."""

    encoder: SampleEncoder
    images_dir: Path
    max_images: int
    allow_absolute: bool
    raw: bool  # rows are JSON text (JSON/JSONL) rather than table columns
    _rows: ImageRows | None = None

    def image_rows(self) -> ImageRows:
        if self._rows is None:
            self._rows = ImageRows(self.encoder)
        return self._rows


def _batch_rows(batch: dict[str, list], indices: list[int], ctx: _Context) -> list[tuple[int, Any]]:
    if ctx.raw:
        return [(line, loads_row(text)) for line, text in zip(batch["line"], batch["row"], strict=True)]
    names = list(batch)
    return [(i + 1, {k: batch[k][j] for k in names}) for j, i in enumerate(indices)]


def _index_batch(batch: dict[str, list], indices: list[int], ctx: _Context) -> dict[str, list]:
    rows = _batch_rows(batch, indices, ctx)
    out: dict[str, list] = {k: [None] * len(rows) for k in _features()}
    pending = []  # (slot, text, spans, expansions) of rows whose text is tokenized in one call below
    for slot, (line, row) in enumerate(rows):
        out["line"][slot] = line
        out["images"][slot] = []
        try:
            messages, images = parse_row(row, ctx.images_dir, ctx.max_images, allow_absolute=ctx.allow_absolute)
            sizes = [image_header(im) for im in images]
            expansions = [ctx.image_rows()(w, h) for w, h in sizes]
            text, spans = ctx.encoder.answer_spans(messages)
        except (RowError, VlmSwapError) as exc:
            out["error"][slot] = str(exc)
            continue
        out["messages"][slot] = json.dumps(messages)
        out["images"][slot] = [
            {"path": None, "bytes": im} if isinstance(im, bytes) else {"path": im, "bytes": None} for im in images
        ]
        options = row.get("options") if isinstance(row, dict) else None
        if isinstance(options, list) and all(isinstance(o, str) for o in options):
            out["options"][slot] = options
        pending.append((slot, text, spans, expansions))
    for (slot, _, spans, expansions), tokens in zip(
        pending, ctx.encoder.tokenize([p[1] for p in pending]), strict=True
    ):
        try:
            layout = ctx.encoder.layout(tokens, spans, len(expansions), expansions.__getitem__)
        except RowError as exc:
            out["error"][slot], out["messages"][slot] = str(exc), None
            continue
        out["length"][slot] = len(layout.ids)
        out["image_end"][slot] = layout.image_end
        out["first_label"][slot] = layout.first_label
    if _PROGRESS is not None:
        with _PROGRESS.get_lock():
            _PROGRESS.value += len(rows)
    return out


def _source(path: Path, kind: str, build_dir: Path):
    """The rows as a datasets.Dataset: raw JSON text for JSON/JSONL, the table itself otherwise."""
    import datasets

    if kind == "datasets":
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise DataError(f"{path} holds splits {sorted(ds)}; point --data at one of them")
            ds = ds["train"]
    elif kind == "parquet":
        ds = datasets.Dataset.from_parquet(str(path), cache_dir=str(build_dir / "raw"))
    else:
        if next(iter_text_rows(path, kind), None) is None:
            raise DataError(f"{path}: no usable rows (the file holds no rows)")
        features = datasets.Features({"line": datasets.Value("int64"), "row": datasets.Value("string")})
        return datasets.Dataset.from_generator(
            _counted_rows, gen_kwargs={"path": path, "kind": kind}, features=features, cache_dir=str(build_dir / "raw")
        )
    for name, feature in ds.features.items():  # images in the table: keep their bytes, decode nothing
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
        elif isinstance(feature, datasets.List) and isinstance(feature.feature, datasets.Image):
            ds = ds.cast_column(name, datasets.List(datasets.Image(decode=False)))
    return ds


def _counted_rows(path: Path, kind: str) -> Iterator[dict[str, Any]]:
    for i, row in enumerate(iter_text_rows(path, kind)):
        if _PROGRESS is not None and i % 1024 == 0:
            _PROGRESS.value = i
        yield row


def default_workers() -> int:
    """Processes for indexing: the cores this process may use, at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0))))


def _build(path: Path, kind: str, ctx: _Context, out: Path, workers: int, progress) -> None:
    global _PROGRESS
    import datasets

    build_dir = out.with_name(out.name + f".build-{os.getpid()}")
    shutil.rmtree(build_dir, ignore_errors=True)
    quiet = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    _PROGRESS = multiprocessing.Value("q", 0)
    try:
        with _Ticker(progress, "reading rows", None):
            source = _source(path, kind, build_dir)
            n = _PROGRESS.value = len(source)
        build_dir.mkdir(parents=True, exist_ok=True)
        _PROGRESS.value = 0
        num_proc = max(1, min(workers, n // ROWS_PER_PROCESS))
        with _Ticker(progress, "indexing rows", n):
            source.map(
                _index_batch,
                with_indices=True,
                batched=True,
                batch_size=BATCH,
                fn_kwargs={"ctx": ctx},
                remove_columns=source.column_names,
                features=_features(),
                num_proc=num_proc if num_proc > 1 else None,
                cache_file_name=str(build_dir / "index.arrow"),
                new_fingerprint=out.name,
                load_from_cache_file=False,
            )
        shards = sorted(p.name for p in build_dir.glob("index*.arrow"))
        (build_dir / "meta.json").write_text(
            json.dumps({"version": INDEX_VERSION, "data": str(path), "rows": n, "shards": shards})
        )
        for stale in build_dir.iterdir():
            if stale.name not in (*shards, "meta.json"):
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        os.replace(build_dir, out)
    finally:
        _PROGRESS = None
        shutil.rmtree(build_dir, ignore_errors=True)
        if quiet:
            datasets.enable_progress_bars()


class _Ticker:
    """A rich progress task fed, twice a second, from the shared row counter the map workers advance."""

    def __init__(self, progress, label: str, total: int | None):
        self.progress, self.label, self.total = progress, label, total
        self._stop = threading.Event()

    def __enter__(self):
        if self.progress is None:
            return self
        self.task = self.progress.add_task(self.label, total=self.total)
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            if _PROGRESS is not None:
                self.progress.update(self.task, completed=_PROGRESS.value)

    def __exit__(self, *exc) -> None:
        if self.progress is None:
            return
        self._stop.set()
        self._thread.join()
        done = self.total if self.total is not None else (_PROGRESS.value if _PROGRESS is not None else 0)
        self.progress.update(self.task, completed=done, total=done)


# ---- cache ----------------------------------------------------------------------------------


def cache_root() -> Path:
    return Path(os.environ.get("VLM_SWAP_CACHE") or Path.home() / ".cache" / "vlm-swap")


def _data_identity(path: Path, kind: str) -> str:
    if kind == "datasets":  # save_to_disk records the content fingerprint of every split
        states = sorted(path.rglob("state.json"))
        return "|".join(json.loads(p.read_text()).get("_fingerprint", "") for p in states) or str(
            path.stat().st_mtime_ns
        )
    st = path.stat()
    return f"{st.st_size}|{st.st_mtime_ns}"


def processor_identity(processor) -> str:
    """What decides the index of a row: the image processor, the encoder kind, the image tokens, the chat
    template and the tokenizer (its full definition)."""
    tok = processor.tokenizer
    backend = getattr(tok, "backend_tokenizer", None)
    parts = [
        type(processor).__name__,
        processor.image_processor.to_json_string(),
        json.dumps(getattr(processor, "encoder_args", None), sort_keys=True, default=str),
        str(getattr(processor, "encoder_kind", "")),
        str(getattr(processor, "image_token", "")),
        str(getattr(processor, "image_start", "")),
        str(getattr(processor, "image_end", "")),
        str(getattr(processor, "chat_template", "")),
        backend.to_str() if backend is not None else json.dumps(tok.get_vocab(), sort_keys=True),
        json.dumps(tok.special_tokens_map, sort_keys=True, default=str),
    ]
    return hashlib.blake2b("\x00".join(parts).encode(), digest_size=16).hexdigest()


@contextlib.contextmanager
def _locked(lock: Path):
    """An exclusive lock on ``lock`` held by this process (released at exit, or when it dies)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _load(out: Path):
    from datasets import Dataset, concatenate_datasets

    meta = json.loads((out / "meta.json").read_text())
    parts = [Dataset.from_file(str(out / name)) for name in meta["shards"]]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def build_index(
    path: Path,
    images_dir: Path | None,
    encoder: SampleEncoder,
    *,
    max_images: int = 1,
    allow_absolute: bool = False,
    workers: int | None = None,
    progress=None,
):
    """The index of ``path`` (a datasets.Dataset, memory-mapped): read from the cache, or built and cached."""
    path = Path(path).expanduser().absolute()
    kind = source_kind(path)
    images = Path(images_dir).expanduser().absolute() if images_dir is not None else path.parent
    if images_dir is not None and not images.is_dir():
        raise DataError(f"images folder not found: {images_dir}")
    key_parts = [
        str(INDEX_VERSION),
        str(path),
        _data_identity(path, kind),
        str(images),
        str(max_images),
        str(allow_absolute),
        processor_identity(encoder.processor),
        str(encoder.empty_think),
    ]
    key = hashlib.blake2b("\x00".join(key_parts).encode(), digest_size=12).hexdigest()
    out = cache_root() / "index" / key
    with _locked(out.with_name(key + ".lock")):
        if not (out / "meta.json").is_file():
            shutil.rmtree(out, ignore_errors=True)
            ctx = _Context(encoder, images, max_images, allow_absolute, raw=kind in ("json", "jsonl"))
            _build(path, kind, ctx, out, workers or default_workers(), progress)
        return _load(out)


def index_progress(console=None):
    """A rich progress display for indexing: rows, rows/s and time left."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class RowsPerSecond(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:,.0f} rows/s" if task.speed else "")

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RowsPerSecond(),
        TimeRemainingColumn(),
        console=console,
        transient=True,  # the data report follows it; a bad row's error stays the only line
    )
