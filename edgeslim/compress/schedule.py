"""Values that change over training (distillation temperature and alpha): torch-free, so a recipe
is read and checked without importing torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator


class Schedule(BaseModel):
    """A value that changes over training: ``constant`` (start), ``linear`` (start -> end), or
    ``two-phase`` (start until fraction ``switch`` of training, then end)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["constant", "linear", "two-phase"] = "constant"
    start: float
    end: float | None = None
    switch: float = 0.5

    @model_validator(mode="after")
    def _end_needed(self):
        if self.kind != "constant" and self.end is None:
            raise ValueError(f"a '{self.kind}' schedule needs 'end'")
        if not 0.0 <= self.switch <= 1.0:
            raise ValueError("schedule 'switch' must be a fraction of training between 0 and 1")
        return self

    def at(self, fraction: float) -> float:
        """The value at ``fraction`` (0 = first step, 1 = last step) of training."""
        fraction = min(max(fraction, 0.0), 1.0)
        if self.kind == "constant":
            return self.start
        if self.kind == "linear":
            return self.start + (self.end - self.start) * fraction
        return self.start if fraction < self.switch else self.end

    def values(self) -> list[float]:
        return [self.start] if self.end is None else [self.start, self.end]


def scheduled(value: float | Schedule, fraction: float) -> float:
    """A plain number, or a :class:`Schedule` evaluated at ``fraction`` of training."""
    return value.at(fraction) if isinstance(value, Schedule) else float(value)


def schedule_values(value: float | Schedule) -> list[float]:
    """Every value a plain number or schedule can take at its ends (for range checks)."""
    return value.values() if isinstance(value, Schedule) else [float(value)]
