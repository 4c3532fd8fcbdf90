"""One 4-bit copy of a tied embedding table, read by both the token lookup and the LM head.

A small LM ties its input embedding to its output head (SmolLM2: a 49152 x 576 table, 28M of its
135M weights). Weight-only quantization turns the head into ``MatMulNBits`` over ``E^T``
(:func:`edgeslim.quantize.ort.untie_head_for_quantization`) and, with ``quantize_embeddings``, the
lookup into a ``GatherBlockQuantized`` over ``E``: two 4-bit copies of one table, 17 MiB each.

``MatMulNBits`` stores ``E^T`` as ``[N=vocab, K/block, block/2]`` bytes, rows of the vocabulary
quantized in blocks along the hidden width: byte for byte what a ``GatherBlockQuantized`` over a
``[vocab, K/block, block/2]`` uint8 table with ``quantize_axis=2`` reads (onnxruntime packs both the
same way and both default to zero point 8). So the lookup here is rewritten to read the head's own
levels and scales; the head's zero points, when it has them, get a copy in the lookup's layout (one
byte per block), and an ``offset`` head's float block offsets (:mod:`edgeslim.quantize.offset_int4`)
are gathered and added, so the lookup returns exactly the table the head multiplies with.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeslim.quantize.offset_int4 import OFFSET_NODE_SUFFIX


def share_head_table(model: onnx.ModelProto, head_node: str, table: str) -> list[str]:
    """Rewrite every ``Gather`` of the float ``table`` to read the 4-bit bytes of the head
    ``MatMulNBits`` made from ``head_node``, and drop the float table. Returns the names of the float
    ``Gather`` nodes it added (an ``offset`` head's block offsets), which must stay float; ``model``
    is left untouched where the head is not a 4-bit ``MatMulNBits`` of the table's shape."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    head = next((n for n in graph.node if n.op_type == "MatMulNBits" and n.name == f"{head_node}_Q4"), None)
    gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[0] == table]
    if head is None or not gathers or table not in initializers:
        return []
    attrs = {a.name: helper.get_attribute_value(a) for a in head.attribute}
    vocab, width = initializers[table].dims
    block = attrs.get("block_size", 0)
    levels = initializers.get(head.input[1])
    if attrs.get("bits", 4) != 4 or (attrs.get("N"), attrs.get("K")) != (vocab, width) or levels is None \
            or list(levels.dims) != [vocab, width // block, block // 2] \
            or any(a.name == "gather_axis" or (a.name == "axis" and a.i) for g in gathers for a in g.attribute):
        return []
    zero_points = initializers.get(head.input[3]) if len(head.input) > 3 and head.input[3] else None
    if zero_points is not None and zero_points.data_type != onnx.TensorProto.UINT8:
        return []  # HQQ's float zero points: GatherBlockQuantized has no float zero points
    prefix = f"{table}_shared"
    blocks = width // block
    added = [numpy_helper.from_array(np.array([vocab, blocks, 1], np.int64), f"{prefix}_scale_shape"),
             numpy_helper.from_array(np.array([width], np.int64), f"{prefix}_width")]
    nodes = [helper.make_node("Reshape", [head.input[2], added[0].name], [f"{prefix}_scales"], name=f"{prefix}_scales")]
    lookup_inputs = [head.input[1], None, f"{prefix}_scales"]
    if zero_points is not None:
        added.append(_zero_points_per_block(numpy_helper.to_array(zero_points), vocab, blocks,
                                            f"{prefix}_zero_points"))
        lookup_inputs.append(added[-1].name)
    offsets = _transposed_offsets(graph, head_node, initializers)
    for gather in gathers:
        nodes += _lookup_nodes(gather, lookup_inputs, block, f"{prefix}_width", offsets)
    _insert_before_first_use(graph, nodes)
    for gather in gathers:
        graph.node.remove(gather)
    kept = [t for t in graph.initializer if t.name != table]
    del graph.initializer[:]
    graph.initializer.extend(kept + added)
    return [n.name for n in nodes if n.op_type == "Gather"]


def _zero_points_per_block(packed: np.ndarray, vocab: int, blocks: int, name: str) -> onnx.TensorProto:
    """``MatMulNBits``' zero points (two blocks a byte) as the lookup reads them: one byte per block."""
    packed = packed.reshape(vocab, -1)
    unpacked = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(vocab, -1)[:, :blocks]
    return numpy_helper.from_array(unpacked.reshape(vocab, blocks, 1).astype(np.uint8), name)


def _transposed_offsets(graph: onnx.GraphProto, head_node: str, initializers: dict) -> str | None:
    """The float block offsets of an ``offset`` head, stored ``[vocab, K/block]`` so the lookup can
    gather a token's row; the head reads them through a ``Transpose`` (folded when the session loads).
    None for a head without offsets."""
    node = next((n for n in graph.node if n.name == f"{head_node}{OFFSET_NODE_SUFFIX}"), None)
    if node is None or node.input[1] not in initializers:
        return None
    offsets = initializers[node.input[1]]
    transposed = numpy_helper.from_array(numpy_helper.to_array(offsets).T.copy(), f"{offsets.name}_by_token")
    graph.initializer.remove(offsets)
    graph.initializer.append(transposed)
    node.input[1] = f"{offsets.name}_by_token_T"
    _insert_before_first_use(graph, [helper.make_node("Transpose", [transposed.name], [node.input[1]],
                                                      name=node.input[1], perm=[1, 0])])
    return transposed.name


def _lookup_nodes(gather: onnx.NodeProto, lookup_inputs: list, block: int, width: str,
                  offsets: str | None) -> list[onnx.NodeProto]:
    """A 4-bit lookup of ``gather``'s ids, blocks added their offsets, reshaped to its output."""
    out, ids = gather.output[0], gather.input[1]
    inputs = [lookup_inputs[0], ids, *lookup_inputs[2:]]
    nodes = [helper.make_node("GatherBlockQuantized", inputs, [f"{out}_blocks"], name=f"{out}_blocks",
                              domain="com.microsoft", gather_axis=0, quantize_axis=2, block_size=block, bits=4)]
    blocks = f"{out}_blocks"
    if offsets is not None:
        axes = f"{out}_last_axis"
        nodes += [helper.make_node("Gather", [offsets, ids], [f"{out}_offsets"], name=f"{out}_offsets"),
                  helper.make_node("Constant", [], [axes], name=axes,
                                   value=numpy_helper.from_array(np.array([-1], np.int64))),
                  helper.make_node("Unsqueeze", [f"{out}_offsets", axes], [f"{out}_offsets_1"], name=f"{out}_offsets_1"),
                  helper.make_node("Add", [blocks, f"{out}_offsets_1"], [f"{out}_with_offsets"], name=f"{out}_with_offsets")]
        blocks = f"{out}_with_offsets"
    nodes += [helper.make_node("Shape", [ids], [f"{out}_ids_shape"], name=f"{out}_ids_shape"),
              helper.make_node("Concat", [f"{out}_ids_shape", width], [f"{out}_shape"], name=f"{out}_shape", axis=0),
              helper.make_node("Reshape", [blocks, f"{out}_shape"], [out], name=out)]
    return nodes


def _insert_before_first_use(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    """Insert ``nodes`` (in order) before the first node that reads any of their outputs, keeping the
    graph topologically sorted."""
    produced = {o for n in nodes for o in n.output}
    index = next((i for i, n in enumerate(graph.node) if produced & set(n.input)), len(graph.node))
    for offset, node in enumerate(nodes):
        graph.node.insert(index + offset, node)
