"""INT4 with float block offsets on onnxruntime's fast symmetric kernel (``algorithm: offset``).

Each block of ``block_size`` weights along a MatMul's input dimension is stored as 4-bit levels ``q``
(0..15) spanning its own minimum ``m`` and maximum: ``w = q * d + m`` with ``d = (max - m) / 15``.
Weights dequantized from a GGUF Q4_1 file lie exactly on such a grid, so this writes them back
without loss; for other weights it is min-max RTN without the rounding of the offset to an integer
zero point. HQQ's float zero points express the same grid, but onnxruntime runs them on a slow kernel
(a tenth of the fp32 decode speed of SmolLM2). Here the product runs on the fast symmetric one
(implicit zero point 8) and the offset comes back as a small float correction::

    x @ W = MatMulNBits(x, q, d) + (x @ S) @ (m + 8 d)

where ``S`` sums ``x`` over each block (a constant 0/1 matrix, K x K/block, one per input width)
and ``m + 8 d`` is one float per block and output (K/block x N): the same bytes a float zero point
would take.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: the correction ``MatMul`` of a rewritten node ``X`` is named ``X`` + this (its weight: the offsets)
OFFSET_NODE_SUFFIX = "_offset"


def offset_blocks(weight: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``weight`` [K, N] as 4-bit levels [N, K/block, block], steps ``d`` and offsets ``m`` [N, K/block]."""
    k, n = weight.shape
    blocks = weight.T.reshape(n, k // block_size, block_size).astype(np.float32)
    low, high = blocks.min(-1), blocks.max(-1)
    step = (high - low) / 15.0
    step[step == 0] = 1.0  # a constant block: every level 0, the offset carries the value
    levels = np.clip(np.rint((blocks - low[..., None]) / step[..., None]), 0, 15).astype(np.uint8)
    return levels, step.astype(np.float32), low.astype(np.float32)


def _pack(levels: np.ndarray) -> np.ndarray:
    """Two 4-bit levels per byte, the first in the low nibble (``MatMulNBits``' layout)."""
    return (levels[..., 0::2] | (levels[..., 1::2] << 4)).astype(np.uint8)


def quantize_offset_int4(model: onnx.ModelProto, block_size: int = 32, accuracy_level: int | None = None,
                         nodes_to_exclude: list[str] | None = None) -> int:
    """Rewrite every MatMul of ``model`` whose weight is a constant [K, N] with K a multiple of
    ``block_size`` (and not in ``nodes_to_exclude``) in place; returns how many were rewritten."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    skip = set(nodes_to_exclude or [])
    nodes, added, sums, rewritten = [], [], {}, 0
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        dims = list(weight.dims) if weight is not None else []
        if weight is None or node.name in skip or len(dims) != 2 or dims[0] % block_size or dims[0] < block_size:
            nodes.append(node)
            continue
        k, n = dims
        levels, step, low = offset_blocks(numpy_helper.to_array(weight), block_size)
        base, out = weight.name, node.output[0]
        added += [numpy_helper.from_array(_pack(levels), f"{base}_q4"), numpy_helper.from_array(step.reshape(-1), f"{base}_d"),
                  numpy_helper.from_array((low + 8.0 * step).T.copy(), f"{base}_offset")]
        if k not in sums:
            blocksum = np.zeros((k, k // block_size), np.float32)
            blocksum[np.arange(k), np.arange(k) // block_size] = 1.0
            sums[k] = f"edgeslim_blocksum_{k}x{block_size}"
            added.append(numpy_helper.from_array(blocksum, sums[k]))
        attrs = {"K": k, "N": n, "bits": 4, "block_size": block_size}
        if accuracy_level is not None:
            attrs["accuracy_level"] = accuracy_level
        name = node.name or out
        nodes += [helper.make_node("MatMulNBits", [node.input[0], f"{base}_q4", f"{base}_d"], [f"{out}_q4"],
                                   name=f"{name}_Q4", domain="com.microsoft", **attrs),
                  helper.make_node("MatMul", [node.input[0], sums[k]], [f"{out}_blocksum"], name=f"{name}_blocksum"),
                  helper.make_node("MatMul", [f"{out}_blocksum", f"{base}_offset"], [f"{out}_offset"], name=f"{name}{OFFSET_NODE_SUFFIX}"),
                  helper.make_node("Add", [f"{out}_q4", f"{out}_offset"], [out], name=f"{name}_add")]
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + added)
    if not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return rewritten
