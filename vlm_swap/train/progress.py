"""The progress display of a training run: one line per stage, live on a terminal, plain lines in a log.

``training_progress`` is the rich display a run opens once; ``RichProgress`` is the Trainer callback that keeps a
stage's line current (step/total, loss, lr, the throughput of the last logging interval, ETA).
"""

from __future__ import annotations

import time

from rich import get_console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Column
from transformers import TrainerCallback


def training_progress(console=None, *, enabled: bool = True) -> Progress:
    """The progress display of a run: one line per stage (step/total, loss, lr, tokens/s, ETA), redrawn
    4 times a second on a terminal. Only the bar is elastic, so at 80 columns it gives way and the
    counters stay whole. Where the output is not a terminal, ``RichProgress`` prints plain lines itself, so
    the display is transient: rich would otherwise print its last frame, squeezed to 80 columns, at the end."""
    fixed = {"no_wrap": True}
    console = console or get_console()
    return Progress(
        TextColumn("{task.description}", table_column=Column(**fixed)),
        BarColumn(bar_width=None, table_column=Column(ratio=1)),
        MofNCompleteColumn(table_column=Column(**fixed)),
        TextColumn("{task.fields[info]}", table_column=Column(**fixed)),
        TimeRemainingColumn(table_column=Column(**fixed)),
        console=console,
        disable=not enabled,
        refresh_per_second=4,
        transient=not console.is_terminal,
    )


class RichProgress(TrainerCallback):
    """A stage's line in ``training_progress``: shown from the start of the stage, updated at every step
    and every log. Where the output is not a terminal (a log file, CI) rich cannot redraw a line, so
    the callback prints one itself: at the first step, then at most every ``LOG_EVERY_S`` seconds, and
    at the last step."""

    LOG_EVERY_S = 30.0
    SHOWN = (("samples_per_second", "{:,.1f} samples/s"), ("tokens_per_second", "{:,.0f} tok/s"),
             ("data_wait", "data wait {:.0%}"), ("peak_mem_gib", "peak {:.1f} GiB"),
             ("peak_rss_gib", "peak RSS {:.1f} GiB"), ("mfu", "MFU {:.1%}"))  # fmt: skip

    def __init__(self, progress: Progress, stage_label: str):
        self.progress = progress
        self.label = stage_label
        self.task = None
        self.loss: float | None = None
        self.lr: float | None = None
        self._t0 = 0.0
        self._tokens0 = 0
        self._printed = None  # when a plain line was last printed (not a terminal)
        self.figures: dict[str, float] = {}  # the throughput of the last logging interval (telemetry)

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()
        self._tokens0 = state.num_input_tokens_seen
        self.task = self.progress.add_task(self.label, total=state.max_steps, completed=state.global_step, info="")
        self.progress.update(self.task, info=self._info(state))

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        self.loss = logs.get("loss", self.loss)
        self.lr = logs.get("learning_rate", self.lr)
        self.figures.update({key: logs[key] for key, _ in self.SHOWN if key in logs})
        if self.task is not None:
            self.progress.update(self.task, info=self._info(state))

    def on_step_end(self, args, state, control, **kwargs):
        self.progress.update(self.task, completed=state.global_step, info=self._info(state))
        console = self.progress.console
        if self.progress.disable or console.is_terminal:
            return
        now = time.perf_counter()
        last = state.global_step >= state.max_steps
        if self._printed is None or now - self._printed >= self.LOG_EVERY_S or last:
            self._printed = now
            console.print(
                f"{self.label}: step {state.global_step}/{state.max_steps}  {self._info(state)}", markup=False
            )

    def _info(self, state) -> str:
        """``loss 1.2345 lr 1.0e-03`` and the last interval's throughput (``12,345 tok/s ...``, before the first
        log the stage's own tokens/s); a dash for what is not known yet (the loss, before a log)."""
        loss = f"{self.loss:.4f}" if self.loss is not None else "-"
        lr = f"{self.lr:.1e}" if self.lr is not None else "-"
        if self.figures:
            shown = "  ".join(fmt.format(self.figures[key]) for key, fmt in self.SHOWN if key in self.figures)
        else:
            elapsed = time.perf_counter() - self._t0
            shown = f"{(state.num_input_tokens_seen - self._tokens0) / elapsed if elapsed > 0 else 0.0:,.0f} tok/s"
        return f"loss {loss} lr {lr}  {shown}"
