"""Imports every module that registers a built-in stage (see :func:`edgeslim.pipeline.register_stage`).

The order here is the order stages are listed by ``edgeslim recipes show``; the order a recipe runs
them in is the recipe's own.
"""

import importlib
import importlib.util

STAGE_MODULES = (
    "edgeslim.compress.distill",
    "edgeslim.compress.prune",
    "edgeslim.compress.lowrank",
    "edgeslim.compress.vocab",
    "edgeslim.export.onnx",
    "edgeslim.export.quantize",
    "edgeslim.export.mobile",
)

for _name in STAGE_MODULES:
    if importlib.util.find_spec(_name) is not None:
        importlib.import_module(_name)
