"""A tied embedding table is stored once in 4 bits: the token lookup reads the LM head's own bytes.

The check is exact: the lookup's output must be the table the head's ``MatMulNBits`` multiplies
with, dequantized here in numpy from the head's levels, scales, zero points and (``offset``) block
offsets; the quantized file must hold no second 4-bit copy and no float table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from _llm_models import tiny_llama_folder
from edgeslim.export.export_config import ExportConfig
from edgeslim.export.onnx import export_model
from edgeslim.quantize.offset_int4 import OFFSET_NODE_SUFFIX
from edgeslim.quantize.specs import make_spec, quantize_with

IDS = np.array([[5, 9, 17, 3, 5]], np.int64)


@pytest.fixture(scope="module")
def tied_llama(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tied")
    export_model(tiny_llama_folder(root / "hf"), root / "onnx", "causal-lm", ExportConfig(decode_steps=1))
    return root / "onnx" / "model.onnx"


def feeds(session: ort.InferenceSession) -> dict:
    """The ids above as one prompt with an empty KV cache."""
    feed = {"input_ids": IDS, "attention_mask": np.ones_like(IDS), "position_ids": np.arange(IDS.shape[1])[None]}
    for meta in session.get_inputs():
        if meta.name.startswith("past_key_values"):
            feed[meta.name] = np.zeros((1, meta.shape[1], 0, meta.shape[3]), np.float32)
    return {k: v for k, v in feed.items() if k in {m.name for m in session.get_inputs()}}


def head_table(model: onnx.ModelProto) -> np.ndarray:
    """The [vocab, hidden] table the LM head's MatMulNBits multiplies with, dequantized in numpy."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    head = next(n for n in model.graph.node if n.op_type == "MatMulNBits" and "lm_head" in n.name)
    attrs = {a.name: helper.get_attribute_value(a) for a in head.attribute}
    packed = inits[head.input[1]]
    levels = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(attrs["N"], -1, attrs["block_size"])
    scales = inits[head.input[2]].reshape(attrs["N"], -1)
    zero = np.full(scales.shape, 8.0, np.float32)
    if len(head.input) > 3 and head.input[3]:
        zp = inits[head.input[3]].reshape(attrs["N"], -1)
        zero = np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(attrs["N"], -1)[:, :scales.shape[1]].astype(np.float32)
    table = (levels.astype(np.float32) - zero[..., None]) * scales[..., None]
    offset = next((n for n in model.graph.node if n.name == head.name[:-3] + OFFSET_NODE_SUFFIX), None)
    if offset is not None:  # read through a Transpose of the [vocab, blocks] offsets
        transpose = next(n for n in model.graph.node if n.output[0] == offset.input[1])
        table = table + inits[transpose.input[0]][..., None]
    return table.reshape(attrs["N"], attrs["K"])


def lookup(model: onnx.ModelProto) -> np.ndarray:
    """The embedding lookup's output for IDS, run by onnxruntime."""
    lookup_out = next(n.output[0] for n in model.graph.node if n.op_type == "GatherBlockQuantized")
    reshaped = next(n.output[0] for n in model.graph.node if n.op_type == "Reshape" and
                    any(i == lookup_out or i.startswith(lookup_out.removesuffix("_blocks")) for i in n.input))
    model.graph.output.append(helper.make_tensor_value_info(reshaped, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([reshaped], feeds(session))[0]


@pytest.mark.parametrize("keys", [{"algorithm": "rtn"}, {"algorithm": "rtn", "symmetric": True},
                                  {"algorithm": "offset", "accuracy_level": 4}], ids=lambda k: "-".join(map(str, k.values())))
def test_lookup_reads_the_heads_own_4bit_table(tied_llama, tmp_path, keys):
    dst = quantize_with(make_spec(mode="weight_only", block_size=32, quantize_embeddings=True, **keys),
                        tied_llama, tmp_path / "q.onnx")
    model = onnx.load(str(dst))
    gather = next(n for n in model.graph.node if n.op_type == "GatherBlockQuantized")
    head = next(n for n in model.graph.node if n.op_type == "MatMulNBits" and "lm_head" in n.name)
    assert gather.input[0] == head.input[1]  # one 4-bit copy of the table
    float_tables = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and
                    np.prod(t.dims) >= 0.5 * head_table(model).size]
    assert not float_tables, [t.name for t in float_tables]
    np.testing.assert_allclose(lookup(model)[0], head_table(model)[IDS[0]], rtol=1e-6, atol=1e-6)


def test_sharing_shrinks_the_file_and_keeps_the_logits(tied_llama, tmp_path):
    """Against the same quantization with the lookup's own RTN copy: smaller by about one 4-bit
    table, and the logits close (the lookup now uses the head's rounding, not its own)."""
    spec = make_spec(mode="weight_only", algorithm="rtn", block_size=32, quantize_embeddings=True)
    shared = quantize_with(spec, tied_llama, tmp_path / "shared.onnx")
    head_only = quantize_with(make_spec(mode="weight_only", algorithm="rtn", block_size=32), tied_llama,
                              tmp_path / "head.onnx")
    table_bytes = head_table(onnx.load(str(shared))).size // 2
    assert shared.stat().st_size < head_only.stat().st_size - 6 * table_bytes  # the float table (8 bytes per 2) is gone
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (shared, head_only)]
    shared_logits, head_logits = (s.run(None, feeds(s))[0] for s in sessions)
    assert shared_logits.shape == head_logits.shape
    assert np.abs(shared_logits - head_logits).max() < 0.5 * np.abs(head_logits).max()


def test_a_head_with_float_zero_points_keeps_its_own_lookup(tied_llama, tmp_path):
    """HQQ's float zero points have no 4-bit lookup: the table gets RTN's GatherBlockQuantized."""
    dst = quantize_with(make_spec(mode="weight_only", algorithm="hqq", block_size=32, quantize_embeddings=True),
                        tied_llama, tmp_path / "q.onnx")
    model = onnx.load(str(dst))
    gather = next(n for n in model.graph.node if n.op_type == "GatherBlockQuantized")
    head = next(n for n in model.graph.node if n.op_type == "MatMulNBits" and "lm_head" in n.name)
    assert gather.input[0] != head.input[1]


@pytest.mark.parametrize("algorithm", ["rtn", "offset"])
def test_sibling_matmuls_fused_compute_the_same_logits_with_fewer_kernel_calls(tied_llama, tmp_path, algorithm):
    """Query, key and value (and gate, up) joined into one MatMulNBits each: every output column keeps
    its own blocks, so the logits are those of the unfused quantization; three calls a block, not seven."""
    from edgeslim.quantize.ort import quantize_weight_only

    paths = {fuse: quantize_weight_only(tied_llama, tmp_path / f"{fuse}.onnx", algorithm=algorithm, block_size=32,
                                        quantize_embeddings=True, fuse_siblings=fuse) for fuse in (True, False)}
    calls = {fuse: [n.op_type for n in onnx.load(str(p)).graph.node].count("MatMulNBits") for fuse, p in paths.items()}
    layers = 4
    assert calls[False] == 7 * layers + 1 and calls[True] == 4 * layers + 1  # (qkv, o, gate-up, down) + head
    logits = []
    for path in paths.values():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits.append(session.run(None, feeds(session))[0])
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-5, atol=1e-5 * np.abs(logits[1]).max())


def test_a_node_kept_apart_keeps_its_group_unfused(tied_llama):
    from edgeslim.quantize.sibling_matmuls import fuse_sibling_matmuls

    model = onnx.load(str(tied_llama))
    query = next(n.name for n in model.graph.node if n.op_type == "MatMul" and "q_proj" in n.name)
    before = [n.op_type for n in model.graph.node].count("MatMul")
    removed = fuse_sibling_matmuls(model, keep_apart=[query])
    assert removed == 4 * 1 + (4 - 1) * 2  # gate-up in every block, q-k-v in all but the one kept apart
    assert [n.op_type for n in model.graph.node].count("MatMul") == before - removed
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(str(tied_llama), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, feeds(session))[0], reference.run(None, feeds(reference))[0],
                               rtol=1e-5, atol=1e-5)
