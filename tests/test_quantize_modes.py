"""Every quantization mode on tiny encoder and causal-LM exports: loads in onnxruntime, stays close to
fp32, and shrinks the quantized weights by the expected ratio (INT8 ~1/4, INT4 ~1/8)."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from _quantize_models import export_torchscript, fuse_o2, run_onnx, sentiment_data, tiny_llama_onnx, trained_tiny_bert
from edgeslim.quantize.specs import make_spec, quantize_with
from edgeslim.quantize import inc as quantize_inc


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A tiny BERT fine-tuned on synthetic reviews, its ONNX export, and tokenized eval feeds."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("enc")
    data = sentiment_data()
    model = trained_tiny_bert(root / "hf", data)
    onnx_file = export_torchscript(model, root / "model.onnx")
    tokenizer = AutoTokenizer.from_pretrained(root / "hf")
    feeds = [dict(tokenizer(ex.text, return_tensors="np")) for ex in data.eval[:16]]
    calibration = [dict(tokenizer(ex.text, return_tensors="np")) for ex in data.train[:16]]
    return types.SimpleNamespace(root=root, hf=root / "hf", onnx=onnx_file, feeds=feeds, calibration=calibration,
                                 reference=[run_onnx(onnx_file, f) for f in feeds])


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    """A tiny Llama exported by Optimum with its KV cache (text-generation-with-past)."""
    from transformers import AutoTokenizer

    folder = tiny_llama_onnx(tmp_path_factory.mktemp("llama"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = ["the movie was very good", "bad sad movie", "i love the movie", "it is not fine"]
    feeds = [with_empty_past(folder / "model.onnx", dict(tokenizer(t, return_tensors="np"))) for t in texts]
    return types.SimpleNamespace(folder=folder, onnx=folder / "model.onnx", feeds=feeds,
                                 reference=[run_onnx(folder / "model.onnx", f) for f in feeds])


def with_empty_past(onnx_file: Path, feed: dict) -> dict:
    """Inputs for one KV-cache call scoring the whole text: positions and a zero-length past."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    length = feed["input_ids"].shape[1]
    feed = {k: v.astype(np.int64) for k, v in feed.items() if k != "token_type_ids"}
    feed["position_ids"] = np.arange(length, dtype=np.int64)[None, :]
    for meta in session.get_inputs():
        if meta.name.startswith("past_key_values"):
            feed[meta.name] = np.zeros((1, meta.shape[1], 0, meta.shape[3]), dtype=np.float32)
    return feed


def relative_error(reference: list[np.ndarray], outputs: list[np.ndarray]) -> float:
    """Largest absolute output difference over the largest reference magnitude."""
    diff = max(float(np.abs(r - o).max()) for r, o in zip(reference, outputs))
    return diff / max(float(np.abs(r).max()) for r in reference)


def agreement(reference: list[np.ndarray], outputs: list[np.ndarray]) -> float:
    """Fraction of positions whose arg-max output is the same as fp32's."""
    same = [np.argmax(r, -1) == np.argmax(o, -1) for r, o in zip(reference, outputs)]
    return float(np.mean(np.concatenate([s.ravel() for s in same])))


def ops(onnx_file: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(onnx_file)).graph.node]


def nbits_weight_ratio(quant_file: Path) -> tuple[float, float]:
    """(packed weights, packed weights + scales + zero points) bytes over the fp32 weights they replace
    (K x N floats per MatMulNBits, however many MatMuls it joined)."""
    quant_graph = onnx.load(str(quant_file)).graph
    quant_inits = {i.name: numpy_helper.to_array(i) for i in quant_graph.initializer}
    fp32 = packed = total = 0
    for node in quant_graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        fp32 += attrs["K"] * attrs["N"] * 4
        packed += quant_inits[node.input[1]].nbytes
        total += sum(quant_inits[name].nbytes for name in node.input[1:] if name in quant_inits)
    assert fp32 > 0
    return packed / fp32, total / fp32


# --- INT8 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("calibration,fmt", [("minmax", "qdq"), ("entropy", "qdq"), ("percentile", "qdq"),
                                             ("minmax", "qoperator")])
def test_static_int8_every_method_and_format(encoder, tmp_path, calibration, fmt):
    spec = make_spec(mode="static", calibration=calibration, format=fmt, calibration_samples=16)
    dst = quantize_with(spec, encoder.onnx, tmp_path / "q.onnx", calibration=encoder.calibration)
    outputs = [run_onnx(dst, f) for f in encoder.feeds]
    # Stated bound: static INT8 keeps logits within 15% of their range and every prediction.
    assert relative_error(encoder.reference, outputs) < 0.15
    assert agreement(encoder.reference, outputs) == 1.0
    present = ops(dst)
    if fmt == "qdq":
        assert present.count("QuantizeLinear") >= 12 and "MatMul" in present
    else:
        assert present.count("QLinearMatMul") == 12


def test_static_quantizes_embeddings_only_when_asked(encoder, tmp_path):
    with_emb = quantize_with(make_spec(mode="static", calibration_samples=8), encoder.onnx, tmp_path / "a.onnx",
                             calibration=encoder.calibration)
    without = quantize_with(make_spec(mode="static", calibration_samples=8, quantize_embeddings=False), encoder.onnx,
                            tmp_path / "b.onnx", calibration=encoder.calibration)
    word_table = "bert.embeddings.word_embeddings.weight"
    assert any(i.name == word_table + "_quantized" and i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
               for i in onnx.load(str(with_emb)).graph.initializer)
    assert word_table in {i.name for i in onnx.load(str(without)).graph.initializer}
    assert with_emb.stat().st_size < without.stat().st_size


def test_dynamic_int8_quantizes_embedding_gather(encoder, tmp_path):
    dst = quantize_with(make_spec(mode="dynamic", per_channel=True), encoder.onnx, tmp_path / "q.onnx")
    table = {i.name: i for i in onnx.load(str(dst)).graph.initializer}
    assert table["bert.embeddings.word_embeddings.weight_quantized"].data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    outputs = [run_onnx(dst, f) for f in encoder.feeds]
    assert relative_error(encoder.reference, outputs) < 0.10
    assert agreement(encoder.reference, outputs) == 1.0


# --- INT4 / INT8 weight-only (MatMulNBits) ----------------------------------------------------------


@pytest.mark.parametrize("algorithm,bits,symmetric,block", [
    ("rtn", 4, False, 32), ("rtn", 4, True, 64), ("rtn", 8, False, 32), ("hqq", 4, False, 32),
])
def test_weight_only_encoder(encoder, tmp_path, algorithm, bits, symmetric, block):
    spec = make_spec(mode="weight_only", algorithm=algorithm, bits=bits, symmetric=symmetric, block_size=block,
                     accuracy_level=4 if bits == 4 else None)
    dst = quantize_with(spec, encoder.onnx, tmp_path / "q.onnx", calibration=encoder.calibration)
    assert ops(dst).count("MatMulNBits") == 2 * 4  # per layer: query-key-value (one input, fused), out, 2 FFN
    outputs = [run_onnx(dst, f) for f in encoder.feeds]
    assert relative_error(encoder.reference, outputs) < (0.10 if bits == 4 else 0.02)
    assert agreement(encoder.reference, outputs) == 1.0
    packed, total = nbits_weight_ratio(dst)
    assert packed == pytest.approx(bits / 32)  # INT4: an eighth of fp32; INT8: a quarter
    assert total < bits / 32 + 5.0 / block  # plus one fp32 scale (and a zero point) per block


def test_weight_only_gather_block_quantized(encoder, tmp_path):
    spec = make_spec(mode="weight_only", algorithm="rtn", quantize_embeddings=True, block_size=32)
    dst = quantize_with(spec, encoder.onnx, tmp_path / "q.onnx")
    assert ops(dst).count("GatherBlockQuantized") >= 1
    outputs = [run_onnx(dst, f) for f in encoder.feeds]
    assert agreement(encoder.reference, outputs) == 1.0


# --- causal LM with KV cache ------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [
    make_spec(mode="dynamic"),
    make_spec(mode="static", calibration_samples=4),
    make_spec(mode="weight_only", algorithm="rtn", block_size=32),
    make_spec(mode="weight_only", algorithm="hqq", block_size=32),
    make_spec(mode="weight_only", algorithm="offset", block_size=32, accuracy_level=4),
], ids=lambda s: s.label())
def test_causal_lm_with_kv_cache(decoder, tmp_path, spec):
    dst = quantize_with(spec, decoder.onnx, tmp_path / "q.onnx", calibration=decoder.feeds)
    outputs = [run_onnx(dst, f) for f in decoder.feeds]
    assert outputs[0].shape == decoder.reference[0].shape
    # Stated bounds on a random-init tiny Llama (near-uniform logits): INT8 within 10%, INT4 within 40%.
    assert relative_error(decoder.reference, outputs) < (0.10 if spec.resolved_bits == 8 else 0.40)
    if spec.mode == "weight_only":
        packed, _ = nbits_weight_ratio(dst)
        assert packed == pytest.approx(1 / 8)
        assert ops(dst).count("MatMulNBits") == 2 * 4 + 1  # qkv o gate-up down per layer, and lm_head


# --- neural-compressor weight-only, written as real MatMulNBits -------------------------------------


@pytest.mark.parametrize("algorithm,symmetric", [("rtn", True), ("gptq", False), ("awq", False)])
def test_neural_compressor_encoder_reaches_onnx_as_4bit(encoder, tmp_path, algorithm, symmetric):
    spec = make_spec(mode="neural_compressor", algorithm=algorithm, symmetric=symmetric, block_size=32)
    feeds = encoder.calibration[:2]  # AWQ's scale search and GPTQ's Hessians dominate the test time
    dst = quantize_with(spec, encoder.onnx, tmp_path / "q.onnx", calibration=feeds, torch_dir=encoder.hf)
    assert ops(dst).count("MatMulNBits") == 12
    packed, _ = nbits_weight_ratio(dst)
    assert packed == pytest.approx(1 / 8)
    assert dst.stat().st_size < 0.6 * encoder.onnx.stat().st_size  # not fp32 weights dequantized in the graph
    outputs = [run_onnx(dst, f) for f in encoder.feeds]
    assert relative_error(encoder.reference, outputs) < 0.10
    assert agreement(encoder.reference, outputs) == 1.0


def test_neural_compressor_causal_lm(decoder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = make_spec(mode="neural_compressor", algorithm="rtn", block_size=32)
    dst = quantize_with(spec, decoder.onnx, tmp_path / "q.onnx", calibration=decoder.feeds,
                        torch_dir=decoder.folder.parent / "hf")
    assert ops(dst).count("MatMulNBits") >= 2 * 7
    outputs = [run_onnx(dst, f) for f in decoder.feeds]
    assert relative_error(decoder.reference, outputs) < 0.40
    assert not (tmp_path / "nc_workspace").exists()  # neural-compressor's workspace is kept out of the cwd


def test_matmul_nbits_writer_matches_numpy(tmp_path):
    """The packed layout: a one-node MatMulNBits graph computes x @ dequantized(W).T like numpy does."""
    rng = np.random.default_rng(0)
    n, k, block = 24, 80, 32  # k not a multiple of the block: the last block is padded
    for bits, zero_points in ((4, rng.integers(0, 16, (n, 3))), (4, None), (8, rng.integers(0, 256, (n, 3)))):
        top = (1 << bits) - 1
        layer = quantize_inc.IntLinear(rng.integers(0, top + 1, (n, k)), rng.uniform(0.01, 0.1, (n, 3)).astype(np.float32),
                                       zero_points, bits, block)
        tensors, attrs = quantize_inc.matmul_nbits_tensors(layer, "w")
        node = onnx.helper.make_node("MatMulNBits", ["x"] + [t.name for t in tensors], ["y"], domain="com.microsoft", **attrs)
        graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, k])],
                                       [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, n])], tensors)
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18), onnx.helper.make_opsetid("com.microsoft", 1)], ir_version=9)
        onnx.save(model, str(tmp_path / "m.onnx"))
        x = rng.normal(size=(2, k)).astype(np.float32)
        zp = zero_points if zero_points is not None else np.full((n, 3), 1 << (bits - 1))
        groups = np.arange(k) // block
        weight = (layer.qweight - zp[:, groups]) * layer.scales[:, groups]
        np.testing.assert_allclose(run_onnx(tmp_path / "m.onnx", {"x": x}), x @ weight.T, rtol=1e-4, atol=1e-4)


def test_neural_compressor_autotune_keeps_accuracy(encoder, tmp_path):
    """autotune scores trials with the given evaluator and stops at the first tolerable one."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(encoder.hf)
    examples = sentiment_data().eval[:8]
    calls = []

    def evaluate(model):
        calls.append(1)
        return quantize_inc.torch_accuracy(model, tokenizer, examples)

    spec = make_spec(mode="neural_compressor", algorithm="rtn", autotune=True, block_size=32)
    assert spec.label() == "neural_compressor-autotune-int4-b32"
    dst = quantize_with(spec, encoder.onnx, tmp_path / "q.onnx", calibration=encoder.calibration[:4],
                        torch_dir=encoder.hf, evaluate=evaluate, tolerable_loss=0.05)
    assert len(calls) == 2  # the float baseline, then rtn (tolerable, so tuning stops)
    assert ops(dst).count("MatMulNBits") == 12
    outputs = [run_onnx(dst, f) for f in encoder.feeds]
    assert agreement(encoder.reference, outputs) == 1.0


def test_stage_on_causal_lm_scores_next_token_accuracy(decoder, tmp_path):
    from transformers import AutoTokenizer

    from edgeslim.artifacts import Artifact
    from edgeslim.data import DataBundle, Example
    from edgeslim.quantize.config import QuantizeConfig
    from edgeslim.quantize.stage import run
    from edgeslim.stage import StageContext

    texts = ["the movie was very good", "bad sad movie", "i love the movie", "it is not fine", "the movie is great"]
    data = DataBundle([Example(t) for t in texts], [Example(t) for t in texts], [], 32)
    out = tmp_path / "out"
    out.mkdir()
    recipe = types.SimpleNamespace(task="causal-lm", budgets=types.SimpleNamespace(accuracy_drop=None))
    ctx = StageContext(out_dir=out, recipe=recipe, data=data, quiet=True)
    config = QuantizeConfig(candidates=[make_spec(mode="dynamic"), make_spec(mode="weight_only", block_size=32)],
                            max_accuracy_drop=1.0, latency_runs=3)
    result = run(config, Artifact(decoder.folder, "onnx", {}), ctx)
    # Next-token accuracy of the fp32 model, computed here: arg-max at each position vs the next token.
    tokenizer = AutoTokenizer.from_pretrained(decoder.folder)
    hits = total = 0
    for text in texts:
        feed = with_empty_past(decoder.onnx, dict(tokenizer(text, return_tensors="np")))
        logits = run_onnx(decoder.onnx, feed)[0]
        hits += int((logits[:-1].argmax(-1) == feed["input_ids"][0, 1:]).sum())
        total += logits.shape[0] - 1
    assert result.manifest["reference"]["accuracy"] == pytest.approx(hits / total)
    rows = result.manifest["candidates"]
    assert [r["name"] for r in rows] == ["dynamic-int8", "weight_only-rtn-int4-b32"]
    assert all(r["error"] is None and r["meets_budget"] for r in rows)
    assert (out / "generation_config.json").is_file() and (out / "model.onnx").is_file()


def test_entropy_calibration_is_not_minmax(encoder, tmp_path):
    """quantize_static would hand its entropy calibrator 128 bins for 128 levels (= MinMax ranges)."""
    scales = {}
    for method in ("minmax", "entropy"):
        dst = quantize_with(make_spec(mode="static", calibration=method, calibration_samples=16), encoder.onnx,
                            tmp_path / f"{method}.onnx", calibration=encoder.calibration)
        scales[method] = {i.name: float(numpy_helper.to_array(i)) for i in onnx.load(str(dst)).graph.initializer
                          if i.name.endswith("_output_0_scale")}
    assert scales["minmax"].keys() == scales["entropy"].keys()
    clipped = [k for k in scales["minmax"] if scales["entropy"][k] < scales["minmax"][k] * 0.999]
    assert len(clipped) >= 1  # entropy clips some activation ranges ...
    assert all(scales["entropy"][k] <= scales["minmax"][k] * 1.001 for k in scales["minmax"])  # ... and widens none


@pytest.mark.parametrize("spec", [make_spec(mode="dynamic"), make_spec(mode="static", calibration_samples=16)],
                         ids=lambda s: s.label())
def test_int8_on_the_fused_graph_the_export_stage_ships(encoder, tmp_path, spec):
    """The export stage applies onnxruntime's transformer fusions (Attention, SkipLayerNormalization)."""
    fused = fuse_o2(encoder.onnx, tmp_path / "fused.onnx")
    assert "Attention" in ops(fused)
    dst = quantize_with(spec, fused, tmp_path / "q.onnx", calibration=encoder.calibration)
    outputs = [run_onnx(dst, f) for f in encoder.feeds]
    assert relative_error(encoder.reference, outputs) < 0.15
    assert agreement(encoder.reference, outputs) == 1.0
    # Static QDQ has no rule for the fused Attention and EmbedLayerNormalization: their weights stay float.
    assert dst.stat().st_size < (0.6 if spec.mode == "dynamic" else 0.7) * fused.stat().st_size


def test_hqq_recovers_weights_already_on_a_4bit_grid_where_rtn_cannot(tmp_path):
    """A GGUF Q4_1 teacher's weights are d * q + m per block of 32 inputs (q from 0 to 15, d and m
    fp16): HQQ's float zero points write them back exactly, and so does ``offset`` (float block
    offsets on the symmetric kernel, with fp32 activations), while RTN's integer zero points (or a
    symmetric grid) move every block."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    k, n, block = 128, 64, 32
    levels = rng.integers(0, 16, (k, n))
    levels[0::block], levels[1::block] = 0, 15  # Q4_1 maps each block's min and max to 0 and 15
    step = rng.uniform(0.005, 0.02, (k // block, n)).astype(np.float16).astype(np.float32)
    low = rng.uniform(-0.15, -0.05, (k // block, n)).astype(np.float16).astype(np.float32)
    weight = (np.repeat(step, block, 0) * levels + np.repeat(low, block, 0)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "grid",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, n])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "fp32.onnx"))
    x = rng.standard_normal((4, k)).astype(np.float32)
    exact = x @ weight

    def error(**options) -> float:
        spec = make_spec(mode="weight_only", block_size=block, **{"accuracy_level": 4, **options})
        out = quantize_with(spec, tmp_path / "fp32.onnx", tmp_path / f"{spec.label()}.onnx")
        return float(np.abs(run_onnx(out, {"x": x}) - exact).max() / np.abs(exact).max())

    assert error(algorithm="hqq") < 1e-5
    # fp32 activations: the grid exactly (with int8 activations the kernel's own rounding, which
    # differs between AVX2 and AVX-512 VNNI hosts, comes on top; no bound is asserted for it)
    assert error(algorithm="offset", accuracy_level=None) < 1e-5
    assert error(algorithm="rtn", symmetric=False) > 0.05
    assert error(algorithm="rtn", symmetric=True) > 0.05


def test_hqq_with_quantized_embeddings_gets_gather_block_quantized(encoder, tmp_path):
    spec = make_spec(mode="weight_only", algorithm="hqq", quantize_embeddings=True, block_size=32)
    dst = quantize_with(spec, encoder.onnx, tmp_path / "q.onnx")
    assert ops(dst).count("GatherBlockQuantized") >= 1 and ops(dst).count("MatMulNBits") == 2 * 4
    outputs = [run_onnx(dst, f) for f in encoder.feeds]
    assert agreement(encoder.reference, outputs) == 1.0
