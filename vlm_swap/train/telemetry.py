"""Run facts printed when a stage starts, and the throughput figures added to every training log.

Facts (also stored per stage in ``run.json``): processes, the global batch (per device x accumulation x
processes), tokens per optimizer step (the global batch x the mean sample length, known from validation),
trainable parameters and dtypes per component. Figures, over each logging interval, in the Trainer's logs
(``log_history.json``, ``--report-to`` tensorboard / wandb) and in the progress line: samples/s and non-padding
tokens/s of all processes, the fraction of the wall time this process waited for the data loader, peak memory
(GPU allocator when on a GPU, else the process's peak RSS) and, on a GPU of known peak, MFU from
``flops.FlopCounter``.
"""

from __future__ import annotations

import resource
import time

import numpy as np
import torch

from .flops import FlopCounter, peak_flops
from .precision import component_dtypes
from .recipe import COMPONENTS, Stage


def stage_facts(stage: Stage, world_size: int, counts: dict[str, int], model, lengths=None) -> dict:
    """What a stage will do, in numbers (``counts``: trainable parameters per component; ``lengths``: tokens
    of each dataset item, an array, from the index)."""
    global_batch = stage.batch_size * stage.grad_accum * world_size
    facts = {
        "world_size": world_size,
        "global_batch": global_batch,
        "per_device_batch": stage.batch_size,
        "grad_accum": stage.grad_accum,
        "trainable": counts,
        "dtypes": component_dtypes(model),
        "autocast": stage.precision if torch.cuda.is_available() and stage.precision != "fp32" else None,
    }
    if lengths is not None and len(lengths):
        mean = float(np.minimum(np.asarray(lengths), stage.max_length).mean())
        facts["tokens_per_step"] = round(global_batch * mean)
    return facts


def _count(n: int) -> str:
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def facts_line(facts: dict) -> str:
    world = facts["world_size"]
    batch = f"{facts['per_device_batch']} per device x {facts['grad_accum']} accumulation x {world}"
    parts = [f"{world} process{'es' if world > 1 else ''}", f"global batch {facts['global_batch']} ({batch})"]
    if "tokens_per_step" in facts:
        parts.append(f"~{facts['tokens_per_step']:,} tokens/step")
    trained = ", ".join(f"{c} {_count(facts['trainable'][c])}" for c in COMPONENTS if facts["trainable"][c])
    held = "; ".join(f"{c}: {facts['dtypes'][c]}" for c in COMPONENTS if facts["dtypes"].get(c))
    autocast = f" (autocast {facts['autocast']})" if facts["autocast"] else ""
    return ", ".join(parts) + f"\n  trainable: {trained}\n  dtypes{autocast}: {held}"


class Throughput:
    """Figures over the interval since the previous log; ``fetched`` is called once per optimizer step."""

    def __init__(self, model, world_size: int):
        self.world_size = world_size
        self.on_gpu = torch.cuda.is_available()
        self.peak = peak_flops(torch.cuda.get_device_name()) if self.on_gpu else None
        self.flops = FlopCounter(model) if self.peak else None  # hooks only where MFU can be reported
        self._start(tokens_seen=0)

    def _start(self, tokens_seen: int) -> None:
        self.t0 = time.perf_counter()
        self.tokens0 = tokens_seen
        self.samples = 0
        self.waited = 0.0
        if self.on_gpu:
            torch.cuda.reset_peak_memory_stats()

    def begin(self, tokens_seen: int) -> None:
        """Start the first interval (training begins, or resumes with tokens already seen)."""
        self._start(tokens_seen)
        if self.flops:
            self.flops.take()

    def fetched(self, seconds: float, batches: list[dict]) -> None:
        """One optimizer step's micro-batches came from the loader after ``seconds`` of waiting."""
        self.waited += seconds
        self.samples += sum(len(b["input_ids"]) for b in batches)

    def figures(self, tokens_seen: int) -> dict[str, float]:
        """The interval's figures; starts the next interval."""
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        out = {
            "samples_per_second": round(self.samples * self.world_size / elapsed, 3),
            "tokens_per_second": round((tokens_seen - self.tokens0) / elapsed, 1),
            "data_wait": round(self.waited / elapsed, 4),
        }
        if self.on_gpu:
            out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        else:
            out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        if self.flops:
            out["mfu"] = round(sum(self.flops.take().values()) / elapsed / self.peak, 4)
        self._start(tokens_seen)
        return out

    def close(self) -> None:
        if self.flops:
            self.flops.remove()
