"""MatMuls that read one input become one wider MatMul and a Split, before weight-only quantization.

A decoder block multiplies one normalised hidden state by the query, key and value weights, and
another by the gate and up weights: five calls of ``MatMulNBits`` on two inputs. At batch 1 (decode)
each call is short, and what it costs besides the weights themselves (quantizing the activations to
int8 at ``accuracy_level: 4``, the call, and for ``algorithm: offset`` a block-sum correction and an
``Add`` per layer) is paid once per call. Concatenating the weights along N first gives two calls
and two ``Split`` nodes instead, with the same result: each output column still has its own blocks
and scales.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper


def fuse_sibling_matmuls(model: onnx.ModelProto, keep_apart: list[str] | None = None) -> int:
    """Fuse every group of two or more ``MatMul`` nodes that read the same input with constant 2-D
    weights (used by nothing else) of equal K, except groups with a node named in ``keep_apart`` (a
    quantizer's ``nodes_to_exclude``). Rewrites ``model`` in place; returns how many nodes it removed."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    uses = defaultdict(int)
    for node in graph.node:
        for name in node.input:
            uses[name] += 1
    groups: dict[tuple[str, int], list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is not None and len(weight.dims) == 2 and uses[weight.name] == 1 \
                and weight.data_type == onnx.TensorProto.FLOAT:
            groups[(node.input[0], weight.dims[0])].append(node)
    apart = set(keep_apart or [])
    removed = 0
    for members in groups.values():
        if len(members) > 1 and not apart & {m.name for m in members}:
            _fuse(graph, members, initializers, _opset(model))
            removed += len(members) - 1
    return removed


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


def _fuse(graph: onnx.GraphProto, members: list[onnx.NodeProto], initializers: dict, opset: int) -> None:
    """One MatMul over the members' weights side by side, split back into their outputs."""
    weights = [numpy_helper.to_array(initializers[m.input[1]]) for m in members]
    first = members[0]
    fused_name = f"{first.name or first.output[0]}_siblings"
    fused = numpy_helper.from_array(np.concatenate(weights, axis=1), f"{fused_name}_weight")
    widths = [w.shape[1] for w in weights]
    nodes = [helper.make_node("MatMul", [first.input[0], fused.name], [f"{fused_name}_out"], name=fused_name)]
    outputs = [m.output[0] for m in members]
    if opset >= 13:
        sizes = numpy_helper.from_array(np.array(widths, np.int64), f"{fused_name}_widths")
        graph.initializer.append(sizes)
        nodes.append(helper.make_node("Split", [nodes[0].output[0], sizes.name], outputs, name=f"{fused_name}_split",
                                      axis=-1))
    else:
        nodes.append(helper.make_node("Split", [nodes[0].output[0]], outputs, name=f"{fused_name}_split", axis=-1,
                                      split=widths))
    index = list(graph.node).index(first)
    for node in members:
        graph.node.remove(node)
        graph.initializer.remove(initializers.pop(node.input[1]))
    graph.initializer.append(fused)
    for offset, node in enumerate(nodes):
        graph.node.insert(index + offset, node)
