"""How many parameters a model has, counted the way a reader expects (what the report's ``params`` is)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def onnx_params(onnx_path: Path) -> int:
    """Weight elements in an ONNX graph: MatMulNBits weights count K x N (not packed bytes), and
    tables that are not weights (rotary cos/sin caches) are left out."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    not_weights = {name for node in model.graph.node if node.op_type in ROTARY_OPS for name in node.input[2:4]}
    total = 0
    for init in model.graph.initializer:
        if init.name not in not_weights and not init.name.endswith(("cos_cache", "sin_cache")):
            total += int(np.prod(init.dims)) if init.dims else 1
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a for a in node.attribute}
            k, n = attrs["K"].i, attrs["N"].i
            total += k * n - _packed_elements(model, node.input[1])
    return total


ROTARY_OPS = ("RotaryEmbedding",)


def _packed_elements(model, name: str) -> int:
    for init in model.graph.initializer:
        if init.name == name:
            return int(np.prod(init.dims))
    return 0
