"""onnxruntime's mobile usability verdict for a model: can NNAPI (Android) or CoreML (iOS) run it, and
would fixing the dynamic input shapes help. The bundle stage records it in the manifest.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from edgeslim.artifacts import ONNX_FILE


MOBILE_EPS = {
    "nnapi": ("check_nnapi_partitions", None),
    "coreml_neuralnetwork": ("check_coreml_partitions", "coreml_supported_neuralnetwork_ops.md"),
    "coreml_mlprogram": ("check_coreml_partitions", "coreml_supported_mlprogram_ops.md"),
}


def mobile_usability(onnx_path: Path) -> dict[str, Any]:
    """onnxruntime's mobile usability verdict per execution provider (NNAPI, CoreML), as data.

    The same analysis as ``python -m onnxruntime.tools.check_onnx_model_mobile_usability``: the
    model is optimized to the basic level (as the ORT conversion does), shapes are inferred, and for
    each EP the supported nodes, partitions and unsupported operators are counted; ``verdict`` is
    YES / MAYBE / NO, and ``verdict_with_fixed_shapes`` says what fixing dynamic input shapes gives.
    """
    from onnxruntime.tools.mobile_helpers import usability_checker as checker
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    with tempfile.TemporaryDirectory() as tmp:
        basic = Path(tmp) / ONNX_FILE
        optimize_model(Path(onnx_path), basic, use_external_initializers=True)
        model = ModelProtoWithShapeInfo(basic).model_with_shape_info
    dynamic_inputs, _ = checker.check_shapes(model.graph)
    result: dict[str, Any] = {"dynamic_inputs": [i.name for i in dynamic_inputs], "providers": {}}
    for ep, (func_name, ops_file) in MOBILE_EPS.items():
        func = getattr(checker, func_name)
        check = (lambda fixed, f=func: f(model, fixed)) if ops_file is None else \
            (lambda fixed, f=func, o=ops_file: f(model, fixed, o))
        info = check(True)
        entry = _partition_summary(info)
        if entry["verdict"] != "YES" and dynamic_inputs:
            fixed = check(False)
            entry["verdict_with_fixed_shapes"] = fixed.suitability().name
            entry["supported_nodes_with_fixed_shapes"] = fixed.num_supported_nodes
        result["providers"][ep] = entry
    worth_trying = any(p["verdict"] != "NO" or p.get("verdict_with_fixed_shapes", "NO") != "NO"
                       for p in result["providers"].values())
    result["recommendation"] = ("compare NNAPI (Android) / CoreML (iOS) against the CPU EP" if worth_trying
                                else "use the CPU execution provider")
    return result


def _partition_summary(info) -> dict[str, Any]:
    return {
        "verdict": info.suitability().name,
        "nodes": info.num_nodes,
        "supported_nodes": info.num_supported_nodes,
        "partitions": info.num_partitions,
        "unsupported_ops": sorted(info.unsupported_ops),
        "nodes_unsupported_due_to_op": info.nodes_unsupported_due_to_op,
        "nodes_unsupported_due_to_dynamic_shape": info.nodes_unsupported_due_to_dynamic_input,
    }
