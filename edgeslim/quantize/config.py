"""The recipe keys of the ``quantize`` and ``plain-quantize`` stages, and their registration.

Free of torch and onnxruntime, so ``edgeslim check`` reads and checks a recipe quickly; the stages
themselves are in :mod:`edgeslim.quantize.stage`.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from edgeslim.quantize.specs import MODES, SPEC_KEYS, QuantSpec, SpecBase, make_spec
from edgeslim.stage import StageConfig, register_stage


class SpecKeys(StageConfig):
    """A stage config whose recipe keys may also describe one candidate flat (``mode: weight_only``,
    ``bits: 4``): those keys are gathered into ``spec`` before validation."""

    spec: QuantSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _gather_spec_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        own = set(cls.model_fields) - {"spec"}
        flat = {key: value for key, value in data.items() if key in SPEC_KEYS and key not in own}
        if not flat:
            return data
        return {**{k: v for k, v in data.items() if k not in flat}, "spec": flat}

    @classmethod
    def error_location(cls, loc: tuple) -> tuple:
        """Where a recipe error is: the flat key, not the internal ``spec`` field or the mode's tag."""
        return tuple(part for part in loc if part != "spec" and part not in MODES)

    def the_spec(self) -> SpecBase:
        return self.spec if self.spec is not None else make_spec()


class QuantizeConfig(SpecKeys):
    """Recipe keys of the ``quantize`` stage.

    The keys of a spec (:mod:`edgeslim.quantize.specs`) describe the single candidate used when
    ``candidates`` is empty.
    ``max_accuracy_drop`` (absolute, e.g. 0.01, counted from the input model's accuracy) overrides the
    recipe's ``budgets.accuracy_drop`` (counted from the teacher's eval accuracy when known);
    ``exclude_sensitive`` lets the stage leave up to ``max_excluded_nodes`` of the most sensitive
    nodes in float to meet it. ``eval_limit`` eval examples (default: all) measure accuracy, ``sensitivity_samples``
    measure per-node error, and ``latency_runs`` interleaved runs per model measure latency.
    """

    candidates: list[QuantSpec] = Field(default_factory=list)
    max_accuracy_drop: float | None = Field(None, ge=0)
    exclude_sensitive: bool = True
    max_excluded_nodes: int = Field(8, ge=0)
    eval_limit: int | None = Field(None, ge=1)
    sensitivity_samples: int = Field(16, ge=1)
    latency_runs: int = Field(20, ge=1)

    def specs(self) -> list[SpecBase]:
        """The candidates to try: the listed ones, or the single one the flat keys describe."""
        return list(self.candidates) if self.candidates else [self.the_spec()]


class PlainQuantizeConfig(SpecKeys):
    """One way to quantize (the flat keys of a spec), applied as given: no scoring, no choice."""


register_stage("quantize", config=QuantizeConfig, function="edgeslim.quantize.stage:run", consumes="onnx",
               produces="onnx")
register_stage("plain-quantize", config=PlainQuantizeConfig, function="edgeslim.quantize.stage:run_plain",
               consumes="onnx", produces="onnx")
