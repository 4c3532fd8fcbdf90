"""Tiny ONNX models and inputs for the targets tests, built with onnx.helper (no torch, fast).

``token_model`` mimics a text classifier's interface (``input_ids``, ``attention_mask`` -> ``logits``):
an embedding lookup, ``layers`` square MatMul + Relu blocks, masked mean pooling and a 2-way head,
with seeded random weights. Its FLOPs are known in closed form, which the predict tests use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VOCAB = 50


def token_model(path: Path, hidden: int = 32, layers: int = 2, seed: int = 0, opset: int = 17) -> Path:
    """Write the model to ``path`` and return it."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((VOCAB, hidden)).astype(np.float32), "emb"),
             numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
             numpy_helper.from_array((rng.standard_normal((hidden, 2)) / np.sqrt(hidden)).astype(np.float32), "head")]
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["h0"], axis=0)]
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"m{i}"]),
                  helper.make_node("Relu", [f"m{i}"], [f"h{i + 1}"])]
    nodes += [helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
              helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
              helper.make_node("Mul", [f"h{layers}", "mask3"], ["masked"]),
              helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
              helper.make_node("ReduceSum", ["maskf", "axis1"], ["count"], keepdims=1),
              helper.make_node("Div", ["summed", "count"], ["pooled"]),
              helper.make_node("MatMul", ["pooled", "head"], ["logits"])]
    graph = helper.make_graph(
        nodes, "token_model",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def token_inputs(count: int = 4, seq: int = 16, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` batch-1 examples of real-looking lengths (padding masked out)."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(count):
        length = seq - (i % 3)
        ids = rng.integers(0, VOCAB, (1, length)).astype(np.int64)
        examples.append({"input_ids": ids, "attention_mask": np.ones((1, length), dtype=np.int64)})
    return examples


def token_model_flops(hidden: int, layers: int, seq: int) -> float:
    """Matmul FLOPs of one batch-1 inference at length ``seq`` (2 per multiply-add)."""
    return 2.0 * seq * hidden * hidden * layers + 2.0 * hidden * 2
