"""Loading for training: the dataset workers decode from, the sampler, and the collator.

``SwapDataset`` encodes a sample when a dataloader worker asks for it: decode the image, run the
image processor, render and tokenize. A sample that passed the index but fails there (a file
changed or truncated since) is skipped and counted, not a crash: the next sample stands in for it
and its line travels with the batch (``skipped_lines``) to the Trainer, which counts it for the
run's report. With packing, an item is a pack of whole samples (``packing.Packs``).

``EpochSampler`` draws the order from the seed and the epoch alone (not from the process's RNG
history), so a resumed run sees the batches an uninterrupted run would, and the Trainer skips the
batches of finished steps in the sampler: nothing of them is decoded.
"""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import torch

from ..errors import VlmSwapError
from ..format.compat import empty_shared
from ..train.features import content_key
from .encoding import IGNORE, SampleEncoder, TooLong
from .formats import RowError
from .packing import Packs

MAX_STAND_INS = 16  # samples tried in a row before a decode failure is an error


def default_workers() -> int:
    """Dataloader workers by default: all but one of the cores this process may use, at most 8."""
    return max(0, min(8, len(os.sched_getaffinity(0)) - 1))


class SwapDataset(torch.utils.data.Dataset):
    """Samples (an ``IndexedSamples`` or a list), encoded on access; ``packs`` makes items packs of samples."""

    def __init__(self, samples, encoder: SampleEncoder, packs=None):
        self.samples = samples
        self.encoder = encoder
        self.packs = packs
        # decodes in this process and its forked workers (shared memory), for the run's report
        self.decodes = multiprocessing.Value("q", 0)

    def __getstate__(self):  # spawned workers (not forked) get a fresh counter
        state = dict(self.__dict__)
        state["decodes"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.decodes = multiprocessing.Value("q", 0)

    def __len__(self) -> int:
        return len(self.packs) if self.packs is not None else len(self.samples)

    @property
    def sample_lengths(self) -> np.ndarray:
        """[N] tokens of each sample at the encoder's max_length, known from the index (nothing is encoded)."""
        at = getattr(self.samples, "lengths_at", None)
        if at is not None:
            return at(self.encoder.max_length)
        return np.array([min(s.length, self.encoder.max_length) for s in self.samples], dtype=np.int32)

    @property
    def lengths(self) -> np.ndarray:
        """[items] tokens of each item (a sample, or a packed row)."""
        return self.packs.lengths if self.packs is not None else self.sample_lengths

    def set_packing(self, enabled: bool) -> None:
        """Items become rows of whole samples packed to the encoder's max_length (or samples again)."""
        self.packs = Packs(self.sample_lengths, self.encoder.max_length) if enabled else None

    def encode(self, i: int) -> dict:
        """Sample ``i`` encoded; on a decode failure the next samples stand in, the failed lines recorded."""
        skipped = []
        for attempt in range(MAX_STAND_INS):
            sample = self.samples[(i + attempt) % len(self.samples)]
            with self.decodes.get_lock():
                self.decodes.value += 1
            try:
                out = self.encoder(sample)
            except (VlmSwapError, RowError, TooLong):
                skipped.append(sample.line)
                continue
            out["skipped"] = skipped
            return out
        raise VlmSwapError(f"{MAX_STAND_INS} samples in a row failed to decode (lines {skipped}); check the images")

    def __getitem__(self, i: int):
        if self.packs is None:
            return self.encode(i)
        return [self.encode(int(j)) for j in self.packs[i]]


class EpochSampler(torch.utils.data.Sampler):
    """A permutation of the items drawn from (seed, epoch); with ``group``, items of similar length are
    batched together: mega-batches of ``50 * group`` items, each sorted by length, longest first (the
    Trainer's length grouping, on the index's lengths)."""

    def __init__(self, n: int, seed: int, *, lengths: np.ndarray | None = None, group: int = 0):
        self.n, self.seed, self.lengths, self.group = n, seed, lengths, group
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def order(self) -> np.ndarray:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        if self.lengths is None or not self.group:
            return order
        size = 50 * self.group
        megas = [order[i : i + size] for i in range(0, self.n, size)]
        return np.concatenate([m[np.argsort(-self.lengths[m], kind="stable")] for m in megas])

    def __iter__(self):
        order = self.order()
        for start in range(0, self.n, 65536):  # Python ints a slice at a time, never one per item at once
            yield from order[start : start + 65536].tolist()


def _concat(parts: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat`` along dim 0; in a DataLoader worker, straight into shared memory. Pixel values are most of a
    batch's bytes (75 MB for 16 images of 192 tokens at Qwen3-VL's patch size), and a batch built in ordinary
    memory is copied once more into shared memory to reach the training process: 2 workers fed 1.5x the samples/s
    of none with that copy, 1.8x without it on 2 cores (bench_data.py's loader figure)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.cat(parts, dim=0)
    out = empty_shared(parts[0], (sum(p.shape[0] for p in parts), *parts[0].shape[1:]))
    return torch.cat(parts, dim=0, out=out)


class Collator:
    """Right-pads text, concatenates image tensors along dim 0 in sample order.

    A packed item (a list of encoded samples) becomes one row: the samples back to back, position ids
    restarting at 0 for each, the first token of each unlabelled (nothing before it in its sample
    predicts it) and no attention mask, so that attention stays within each sample (transformers
    builds the block-diagonal causal mask, or flash-attention's varlen kernel runs, from the position
    ids). With ``feature_keys`` on, the batch also holds per sample the content hash of its image
    tensors (None without images) and its placeholder count, the key of the frozen-encoder cache.
    """

    def __init__(self, pad_token_id: int, feature_keys: bool = False, feature_token_ids=(), count_skipped=False):
        self.pad_token_id = pad_token_id
        self.count_skipped = count_skipped  # the Trainer counts undecodable samples from ``skipped_lines``
        self.feature_keys = feature_keys
        self.feature_token_ids = torch.tensor(list(feature_token_ids), dtype=torch.long)

    def __call__(self, items: list) -> dict:
        packed = bool(items) and isinstance(items[0], list)
        rows = items if packed else [[f] for f in items]  # row -> its samples
        samples = [f for row in rows for f in row]
        width = max(sum(f["input_ids"].shape[0] for f in row) for row in rows)
        n = len(rows)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        positions = torch.zeros((n, width), dtype=torch.long)
        for i, row in enumerate(rows):
            start = 0
            for f in row:
                L = f["input_ids"].shape[0]
                input_ids[i, start : start + L] = f["input_ids"]
                labels[i, start : start + L] = f["labels"]
                if packed:
                    labels[i, start] = IGNORE
                positions[i, start : start + L] = torch.arange(L)
                start += L
            mask[i, :start] = 1
            positions[i, start:] = torch.arange(width - start)  # padding: a sequence of its own
        batch = {"input_ids": input_ids, "labels": labels}
        if packed:
            # no KV cache either: transformers derives the per-sample mask from position ids only without one
            batch.update(position_ids=positions, use_cache=False)
        else:
            batch["attention_mask"] = mask
        text_keys = {"input_ids", "labels", "skipped"}
        image_keys = sorted({k for f in samples for k in f} - text_keys)
        for key in image_keys:
            batch[key] = _concat([f[key] for f in samples if key in f])
        if self.count_skipped:
            batch["skipped_lines"] = [line for f in samples for line in f.get("skipped", ())]
        if self.feature_keys:
            keys = []
            for f in samples:
                image = {k: f[k] for k in image_keys if k in f}
                rows_of = int(torch.isin(f["input_ids"], self.feature_token_ids).sum())
                keys.append((content_key(image) if image else None, rows_of))
            batch["feature_keys"] = keys
        return batch


def padding_fraction(batches) -> float:
    """Pad tokens / all tokens over padded batches (their ``attention_mask``)."""
    pad = total = 0
    for batch in batches:
        mask = batch["attention_mask"]
        pad += int((mask == 0).sum())
        total += mask.numel()
    return pad / total if total else 0.0
