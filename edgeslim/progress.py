"""The overall ETA of a run: how long each step (teacher, baselines, stages, report) took is kept in
the output folder when it finishes, and the next run's progress lines add up the steps still to come.

Only measured times are used: a step never timed in this folder is named as such, and a first run
says it has no ETA rather than guessing one. Steps found in the cache finish at once, so the figure
is an upper bound when later steps turn out to be cached.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeslim.artifacts import atomic_write_json

TIMINGS_FILE = ".timings.json"


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class RunClock:
    """The steps of one run in order, and the times they took the last time they ran here."""

    def __init__(self, out_dir: Path, steps: list[str]):
        self.path = Path(out_dir) / TIMINGS_FILE
        self.steps = list(steps)
        self.history: dict[str, float] = {}
        try:
            loaded = json.loads(self.path.read_text())
            self.history = {str(k): float(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}
        except (OSError, ValueError, TypeError):
            self.history = {}

    def finished(self, step: str, seconds: float) -> None:
        """Record a step that really ran (not one taken from the cache)."""
        self.history[step] = round(float(seconds), 1)
        try:
            atomic_write_json(self.path, self.history)
        except OSError:
            pass  # the ETA of the next run is a convenience; never fail a run over it

    def eta(self, step: str) -> str:
        """What is left from the start of ``step``: the sum of the last measured times of it and
        every step after it, naming any never timed here."""
        remaining = self.steps[self.steps.index(step):] if step in self.steps else [step]
        known = [self.history[s] for s in remaining if s in self.history]
        unknown = [s for s in remaining if s not in self.history]
        if not known:
            return "no ETA yet (no step of this run has been timed in this folder)"
        text = f"ETA {format_seconds(sum(known))} for the rest of the run (last times here"
        if unknown:
            text += f"; not timed yet: {', '.join(unknown)}"
        return text + ")"
