"""The usable samples of a data file and its report, read from the index's columns.

``load_dataset`` is the entry point of the pipeline: it builds or reads the cached index
(``index.build_index``), decides which rows are too long for the ``max_length`` asked for, and
returns the kept samples, decoded from the memory-mapped table one at a time (``IndexedSamples``:
arrays of row numbers and lengths, no Python object per row), with the data report.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .encoding import SampleEncoder
from .formats import DataError, Sample
from .index import build_index

MAX_LISTED = 100  # bad / too-long lines kept in the report (the counts are exact)


@dataclass
class DataReport:
    rows: int = 0
    kept: int = 0
    malformed: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)  # the first MAX_LISTED (line, cause)
    dropped: int = 0  # too long for max_length
    too_long: list[int] = field(default_factory=list)  # the first MAX_LISTED lines
    undecodable: int = 0  # passed the index but failed to decode when loaded (skipped in training)

    def summary(self) -> str:
        text = f"{self.kept}/{self.rows} rows kept, {self.malformed} malformed, {self.dropped} too long"
        if self.too_long:
            lines = ", ".join(map(str, self.too_long[:10])) + (", ..." if self.dropped > 10 else "")
            text += f" (dropped: line {lines})"
        if self.undecodable:
            text += f", {self.undecodable} undecodable (skipped)"
        return text


class IndexedSamples:
    """The usable rows of an index, as Samples decoded from the memory-mapped table one at a time."""

    def __init__(self, table, rows: np.ndarray, lengths: np.ndarray, max_length: int):
        self.table = table  # datasets.Dataset over the whole index (memory-mapped)
        self.rows = rows  # [N] int64 row numbers of the kept samples in ``table``
        self.full_lengths = lengths  # [N] int32 untruncated token counts
        self.max_length = max_length  # the one the samples were kept for

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return IndexedSamples(self.table, self.rows[i], self.full_lengths[i], self.max_length)
        row = self.table[int(self.rows[i])]
        images = [im["bytes"] if im["bytes"] is not None else im["path"] for im in row["images"]]
        length = min(int(row["length"]), self.max_length)
        return Sample(row["line"], json.loads(row["messages"]), images, length, row["options"])

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))

    def lengths_at(self, max_length: int) -> np.ndarray:
        """[N] tokens of each sample once truncated to ``max_length``."""
        return np.minimum(self.full_lengths, max_length)


def report_of(table, max_length: int) -> tuple[IndexedSamples, DataReport]:
    """The usable samples at ``max_length`` and the report, from the index's columns (no row is decoded)."""
    import pyarrow.compute as pc

    data = table.data
    bad = data.column("error").is_valid().to_numpy(zero_copy_only=False)
    image_end = data.column("image_end").fill_null(0).to_numpy()
    first_label = data.column("first_label").fill_null(0).to_numpy()
    too_long = ~bad & ((image_end > max_length) | (first_label >= max_length))
    keep = ~bad & ~too_long
    lines = data.column("line").to_numpy()
    bad_rows = np.flatnonzero(bad)[:MAX_LISTED]
    errors = pc.take(data.column("error"), bad_rows).to_pylist() if len(bad_rows) else []
    report = DataReport(
        rows=len(table),
        kept=int(keep.sum()),
        malformed=int(bad.sum()),
        bad=[(int(lines[r]), e) for r, e in zip(bad_rows, errors, strict=True)],
        dropped=int(too_long.sum()),
        too_long=[int(x) for x in lines[np.flatnonzero(too_long)[:MAX_LISTED]]],
    )
    rows = np.flatnonzero(keep)
    lengths = data.column("length").fill_null(0).to_numpy()[rows].astype(np.int32)
    return IndexedSamples(table, rows, lengths, max_length), report


def load_dataset(
    path: str | Path,
    images_dir: str | Path | None,
    encoder: SampleEncoder,
    *,
    max_images: int = 1,
    on_bad_rows: str = "fail",
    allow_absolute_paths: bool = False,
    workers: int | None = None,
    progress=None,
) -> tuple[IndexedSamples, DataReport]:
    """The usable samples of a data file at ``encoder.max_length`` and the data report, through the cached
    index; bad rows fail the load (naming their lines) or are skipped (``on_bad_rows``).

    Paths in the rows are relative to ``images_dir`` (default: the data file's folder). ``progress`` is a
    rich ``Progress`` to show the indexing on (None: silent).
    """
    if on_bad_rows not in ("fail", "skip"):
        raise DataError(f"on_bad_rows must be fail or skip, not {on_bad_rows!r}")
    table = build_index(
        Path(path),
        None if images_dir is None else Path(images_dir),
        encoder,
        max_images=max_images,
        allow_absolute=allow_absolute_paths,
        workers=workers,
        progress=progress,
    )
    samples, report = report_of(table, encoder.max_length)
    if report.malformed and on_bad_rows == "fail":
        shown = "; ".join(f"line {n}: {msg}" for n, msg in report.bad[:5])
        more = f" (and {report.malformed - 5} more)" if report.malformed > 5 else ""
        raise DataError(f"{path}: {report.malformed} bad rows — {shown}{more}; pass --skip-bad-rows to skip them")
    if not len(samples):
        raise DataError(f"{path}: no usable rows ({report.summary()})")
    return samples, report
