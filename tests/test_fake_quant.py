"""Quantization-aware distillation: the fake 4-bit grids are the quantize stage's own grids, the
gradient passes straight through, and a model seen through a grid keeps its own weights and ties
afterwards (the distill stage's end-to-end check is in test_llm_distill.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from edgeslim.compress.distill_config import DistillConfig
from edgeslim.compress.fake_quant import BlockFakeQuant, fake_quantize, fake_quantized
from edgeslim.quantize.offset_int4 import offset_blocks
from edgeslim.quantize.specs import make_spec, quantize_with
from _llm_models import tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")


def _weight(seed: int = 0, shape=(48, 96)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.05


def test_offset_grid_is_the_offset_quantizers_grid():
    weight = _weight()
    levels, step, low = offset_blocks(weight.numpy().T, 32)  # the quantizer takes [K, N]
    written = (levels * step[..., None] + low[..., None]).reshape(weight.shape)
    np.testing.assert_allclose(fake_quantize(weight, 32, "offset").numpy(), written, rtol=0, atol=1e-7)


@pytest.mark.parametrize("grid,symmetric", [("asymmetric", False), ("symmetric", True)])
def test_rtn_grids_are_onnxruntimes_matmul_nbits_weights(tmp_path, grid, symmetric):
    """The weights onnxruntime's RTN writes into MatMulNBits, read back through an identity input,
    are the fake grid's weights."""
    weight = _weight(1)
    k = weight.shape[1]
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight.numpy().T.copy(), "w")])
    onnx.save(helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    dst = quantize_with(make_spec(mode="weight_only", algorithm="rtn", symmetric=symmetric, block_size=32),
                        tmp_path / "m.onnx", tmp_path / "q.onnx")
    import onnxruntime as ort

    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    assert [n.op_type for n in onnx.load(str(dst)).graph.node] == ["MatMulNBits"]
    written = session.run(None, {"x": np.eye(k, dtype=np.float32)})[0].T  # [n, k]
    np.testing.assert_allclose(fake_quantize(weight, 32, grid).numpy(), written, rtol=0, atol=1e-6)


def test_the_gradient_passes_straight_through():
    weight = _weight(2).requires_grad_()
    x = torch.randn(5, weight.shape[1])
    (x @ BlockFakeQuant(32, "offset")(weight).T).sum().backward()
    np.testing.assert_allclose(weight.grad.numpy(), x.sum(0).expand_as(weight).numpy(), rtol=1e-6)


def test_the_model_sees_rounded_weights_inside_and_its_own_after_ties_kept():
    model = tiny_llama(96, layers=2)
    floats = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.tensor([[3, 7, 11, 19]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with fake_quantized(model, 32, "offset") as count:
            assert count == 2 * 7 + 2  # seven projections a block, the head and the (tied) table
            rounded = model(input_ids=ids).logits
            table = model.model.embed_tokens.weight
            np.testing.assert_allclose(table.numpy(), fake_quantize(floats["model.embed_tokens.weight"], 32, "offset").numpy(),
                                       rtol=0, atol=1e-7)  # w + (rounded - w): float rounding only
    assert not torch.allclose(plain, rounded)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    for key, value in model.state_dict().items():
        assert torch.equal(value, floats[key]), key
    assert torch.allclose(model(input_ids=ids).logits, plain)


def test_bad_quantization_aware_keys_are_refused():
    with pytest.raises(ValueError, match="power of 2"):
        DistillConfig(quantization_aware={"block_size": 48})
    with pytest.raises(ValueError):
        DistillConfig(quantization_aware={"grid": "nf4"})
