"""Imports every module that registers a built-in stage (see :func:`edgeslim.pipeline.register_stage`)."""

import edgeslim.compress.distill  # noqa: F401  distill
import edgeslim.compress.lowrank  # noqa: F401  lowrank
import edgeslim.compress.prune  # noqa: F401  prune
import edgeslim.compress.vocab  # noqa: F401  vocab
import edgeslim.export.mobile  # noqa: F401  bundle
import edgeslim.export.onnx  # noqa: F401  export
import edgeslim.export.quantize  # noqa: F401  quantize
