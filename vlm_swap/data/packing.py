"""Packing: whole samples (image and text) into rows of at most ``max_length`` tokens.

The plan is made once per stage from the index's lengths, before anything is decoded: best fit,
longest first (each sample goes to the open row with the least room that still fits it, else opens
a row), which fills rows to within a few percent. Open rows are kept by remaining room, and room is
at most ``max_length``, so placing a sample costs a bisection over at most ``max_length`` values.
The plan is two arrays (sample order, row offsets): no Python object per sample. The sampler then
shuffles the rows each epoch; the collator lays each row out with position ids restarting per
sample, so attention never crosses samples (``loader.Collator``).
"""

from __future__ import annotations

import bisect

import numpy as np


class Packs:
    """Rows of whole samples: ``packs[p]`` are the sample indices of row ``p``; ``lengths[p]`` its tokens."""

    def __init__(self, lengths: np.ndarray, max_length: int):
        lengths = np.asarray(lengths, dtype=np.int64)
        if len(lengths) and int(lengths.max()) > max_length:
            raise ValueError(f"a sample of {int(lengths.max())} tokens does not fit a row of {max_length}")
        self.max_length = max_length
        row_of = _best_fit(lengths, max_length)  # [N] row of each sample
        self.order = np.argsort(row_of, kind="stable")  # [N] samples, row by row
        counts = np.bincount(row_of, minlength=int(row_of.max()) + 1 if len(row_of) else 0)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])  # [P + 1]
        self.lengths = np.bincount(row_of, weights=lengths).astype(np.int64) if len(row_of) else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, p: int) -> np.ndarray:
        return self.order[self.offsets[p] : self.offsets[p + 1]]

    @property
    def utilization(self) -> float:
        """Real tokens / row capacity over all rows."""
        return float(self.lengths.sum()) / (len(self) * self.max_length) if len(self) else 0.0


def _best_fit(lengths: np.ndarray, max_length: int) -> np.ndarray:
    row_of = np.empty(len(lengths), dtype=np.int64)
    rooms: list[int] = []  # distinct remaining room of open rows, ascending
    open_rows: dict[int, list[int]] = {}  # room -> rows with that much room left
    n_rows = 0
    for i in np.argsort(-lengths, kind="stable").tolist():
        need = int(lengths[i])
        j = bisect.bisect_left(rooms, need)
        if j < len(rooms):
            room = rooms[j]
            row = open_rows[room].pop()
            if not open_rows[room]:
                del open_rows[room]
                rooms.pop(j)
        else:
            row, room = n_rows, max_length
            n_rows += 1
        row_of[i] = row
        room -= need
        if room > 0:
            if room not in open_rows:
                bisect.insort(rooms, room)
                open_rows[room] = []
            open_rows[room].append(row)
    return row_of


def varlen_attention(model) -> bool:
    """On GPU with flash-attention installed, the LLM attends packed rows with the varlen kernel (from the
    position ids); elsewhere transformers builds the block-diagonal causal mask from them. True when switched."""
    import importlib.util

    import torch

    if not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None:
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.language_model.set_attn_implementation("flash_attention_2")
    return True
