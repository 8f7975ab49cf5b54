"""The wall clock of one comparison arm, ``arms/NAME/clock.json``: its upgrade's seconds and each training
stage's, kept across a kill and a resume so that a resumed comparison reports what the arm cost once.

``{"upgrade_s": s, "<stage dir>": {"<step>": s at that checkpoint, ..., "end": s}}``
"""

from __future__ import annotations

import time
from pathlib import Path

from transformers import TrainerCallback

from .checkpoints.atomic import read_json, write_json

CLOCK_NAME = "clock.json"


def read_clock(arm_dir: Path) -> dict:
    """The clock of the arm in ``arm_dir`` (empty before its upgrade ended)."""
    path = arm_dir / CLOCK_NAME
    return read_json(path) if path.is_file() else {}


def add_upgrade_time(arm_dir: Path, seconds: float) -> None:
    write_json(arm_dir / CLOCK_NAME, {**read_clock(arm_dir), "upgrade_s": seconds})


class ArmClock(TrainerCallback):
    """Training wall time per stage, kept across a kill and a resume: the time is stored at every
    checkpoint, and a resumed stage starts from the time of the checkpoint it resumes from (the
    steps redone after a kill are counted once)."""

    def __init__(self, arm_dir: Path):
        self.path = arm_dir / CLOCK_NAME
        self.times = read_clock(arm_dir)
        self.stage, self.base, self.t0 = "", 0.0, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.stage = Path(args.output_dir).name
        saved = self.times.setdefault(self.stage, {})
        steps = [int(k) for k in saved if k.isdigit() and int(k) <= state.global_step]
        self.base = saved[str(max(steps))] if steps else 0.0
        self.t0 = time.perf_counter()

    def _store(self, key: str, state) -> None:
        if state.is_world_process_zero:
            self.times[self.stage][key] = self.base + time.perf_counter() - self.t0
            write_json(self.path, self.times)

    def on_save(self, args, state, control, **kwargs):
        self._store(str(state.global_step), state)

    def on_train_end(self, args, state, control, **kwargs):
        self._store("end", state)


def train_seconds(clock: dict) -> float:
    """Training seconds of an arm: the stages' times at their end (``ArmClock``)."""
    return sum(stage.get("end", 0.0) for stage in clock.values() if isinstance(stage, dict))
