"""The registry of built-in stages: importing this module imports every module that registers one
(see :func:`edgeslim.stage.register_stage`): the stages' config modules, which import neither torch
nor onnxruntime. :func:`get_stage` looks a stage up by recipe name."""

from __future__ import annotations

import edgeslim.compress.distill_config  # noqa: F401  distill
import edgeslim.compress.lowrank_config  # noqa: F401  lowrank
import edgeslim.compress.prune_config  # noqa: F401  prune
import edgeslim.compress.vocab_config  # noqa: F401  vocab
import edgeslim.export.bundle_config  # noqa: F401  bundle
import edgeslim.export.export_config  # noqa: F401  export
import edgeslim.quantize.config  # noqa: F401  quantize, plain-quantize
import edgeslim.teacher  # noqa: F401  teacher
from edgeslim.errors import EdgeslimError
from edgeslim.stage import STAGES, StageSpec


def get_stage(name: str) -> StageSpec:
    """The registered stage ``name``; an :class:`EdgeslimError` naming the known ones otherwise."""
    if name not in STAGES:
        known = ", ".join(sorted(n for n, spec in STAGES.items() if spec.consumes != "source"))
        raise EdgeslimError(f"unknown stage '{name}'; known stages: {known}")
    return STAGES[name]
