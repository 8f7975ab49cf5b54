"""The training progress line: shown from the first step, redrawn at least once a second on a
terminal, printed as plain lines elsewhere, no 'nan' before the first loss, counters whole at 80 columns."""

from __future__ import annotations

import io
import time

from rich.console import Console
from transformers import TrainerState

from vlm_swap.train.progress import RichProgress, training_progress


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=80, force_terminal=terminal, color_system=None, legacy_windows=False), buf


def _state(step: int, total: int = 1200, tokens: int = 0) -> TrainerState:
    state = TrainerState(max_steps=total)
    state.global_step, state.num_input_tokens_seen = step, tokens
    return state


def test_counters_are_whole_at_80_columns():
    for label, total in (("stage 1/2 align", 1200), ("stage 2/2 instruct", 100_000)):
        console, buf = _console(terminal=False)
        progress = training_progress(console)
        line = RichProgress(progress, label)
        line.on_train_begin(None, _state(0, total), None)
        line.on_log(None, _state(390, total), None, logs={"loss": 1.23456, "learning_rate": 1e-3})
        line._t0 -= 10_000  # 10**9 tokens in 10,000 s: 100,000 tok/s (8 GPUs)
        line.on_step_end(None, _state(390, total, tokens=10**9), None)
        buf.truncate(0)
        console.print(progress.make_tasks_table(progress.tasks))
        text = buf.getvalue().strip("\x00")
        assert f"{label} " in text and f" 390/{total} " in text and " loss 1.2346 lr 1.0e-03 " in text, text
        assert "tok/s" in text and "…" not in text and len(text.rstrip("\n")) <= 80, text


def test_on_a_terminal_the_line_shows_at_once_and_refreshes_while_a_step_runs():
    console, buf = _console(terminal=True)
    with training_progress(console) as progress:
        RichProgress(progress, "stage 1/1 align").on_train_begin(None, _state(0), None)
        time.sleep(1.3)  # the first step has not ended: the line is there, and redrawn
        frames = buf.getvalue().count("0/1200")
    assert frames >= 2, buf.getvalue()
    assert "loss -" in buf.getvalue() and "nan" not in buf.getvalue()


def test_elsewhere_plain_lines_from_the_first_step_then_every_interval_and_at_the_end():
    console, buf = _console(terminal=False)
    with training_progress(console) as progress:
        line = RichProgress(progress, "stage 1/1 align")
        line.on_train_begin(None, _state(0, total=50), None)
        for step in range(1, 51):
            if step == 2:
                line.on_log(None, _state(step, total=50), None, logs={"loss": 2.5, "learning_rate": 1e-3})
            if step == 30:
                line._printed -= RichProgress.LOG_EVERY_S  # as if 30 s had passed since the last line
            line.on_step_end(None, _state(step, total=50), None)
    printed = [row for row in buf.getvalue().splitlines() if row.startswith("stage 1/1 align: step")]
    assert [row.split()[4] for row in printed] == ["1/50", "30/50", "50/50"], printed
    assert "loss -" in printed[0] and "loss 2.5000" in printed[1] and "nan" not in buf.getvalue()
