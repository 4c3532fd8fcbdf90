"""The registry of built-in stages: importing this module imports every module that registers one
(see :func:`edgeslim.stage.register_stage`); :func:`get_stage` looks a stage up by recipe name."""

from __future__ import annotations

import edgeslim.compress.distill  # noqa: F401  distill
import edgeslim.compress.lowrank  # noqa: F401  lowrank
import edgeslim.compress.prune  # noqa: F401  prune
import edgeslim.compress.vocab  # noqa: F401  vocab
import edgeslim.export.mobile  # noqa: F401  bundle
import edgeslim.export.onnx  # noqa: F401  export
import edgeslim.quantize.stage  # noqa: F401  quantize
import edgeslim.teacher  # noqa: F401  teacher
from edgeslim.errors import EdgeslimError
from edgeslim.stage import STAGES, StageSpec


def get_stage(name: str) -> StageSpec:
    """The registered stage ``name``; an :class:`EdgeslimError` naming the known ones otherwise."""
    if name not in STAGES:
        known = ", ".join(sorted(n for n, spec in STAGES.items() if spec.consumes != "source"))
        raise EdgeslimError(f"unknown stage '{name}'; known stages: {known}")
    return STAGES[name]
