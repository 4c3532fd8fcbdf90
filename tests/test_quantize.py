"""The quantize stage: dynamic INT8 on tiny BERT exports, the known quantizer traps, bad inputs."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from _quantize_models import (
    example_inputs, export_dynamo, export_torchscript, fuse_o2, initializer_bytes, onnx_artifact_dir, run_onnx,
    tiny_bert,
)
from edgeslim.artifacts import Artifact
from edgeslim.errors import EdgeslimError
from edgeslim.quantize.config import QuantizeConfig
from edgeslim.quantize.specs import quantize_dynamic_int8
from edgeslim.quantize.stage import run
from edgeslim.stage import STAGES, StageContext


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A tiny BERT classifier (HF folder) and its TorchScript ONNX export."""
    root = tmp_path_factory.mktemp("bert")
    model = tiny_bert(root / "hf")
    onnx_file = export_torchscript(model, root / "ts.onnx")
    return types.SimpleNamespace(root=root, hf=root / "hf", model=model, onnx=onnx_file)


def logits_error(fp32: np.ndarray, quant: np.ndarray) -> float:
    """Largest logit difference relative to the largest fp32 logit magnitude."""
    return float(np.abs(fp32 - quant).max() / np.abs(fp32).max())


def const_matmul_weights(onnx_file: Path) -> set[str]:
    """Names of initializers used as the B input of MatMul nodes (the weights dynamic INT8 quantizes)."""
    model = onnx.load(str(onnx_file))
    inits = {i.name for i in model.graph.initializer}
    return {n.input[1] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits}


def context(out_dir: Path, task: str = "text-classification") -> StageContext:
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe = types.SimpleNamespace(task=task, budgets=types.SimpleNamespace(accuracy_drop=None))
    return StageContext(out_dir=out_dir, recipe=recipe, data=None, quiet=True, seed=0)


def test_dynamic_int8_loads_is_close_and_quarter_size(bert, tmp_path):
    dst = quantize_dynamic_int8(bert.onnx, tmp_path / "q.onnx")
    feeds = example_inputs(batch=3, length=10)
    with torch.no_grad():
        torch_logits = bert.model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    fp32 = run_onnx(bert.onnx, feeds)
    np.testing.assert_allclose(fp32, torch_logits, atol=1e-4)
    quant = run_onnx(dst, feeds)
    assert quant.shape == fp32.shape
    # Stated bound: dynamic INT8 moves tiny-BERT logits by under 10% of their largest magnitude.
    assert logits_error(fp32, quant) < 0.10
    weights = const_matmul_weights(bert.onnx)
    fp32_bytes = sum(initializer_bytes(bert.onnx, weights).values())
    int8_bytes = sum(initializer_bytes(dst, {w + "_quantized" for w in weights}).values())
    assert len(weights) >= 6 * 2  # Q, K, V, attention output, FFN in/out per layer
    assert int8_bytes == pytest.approx(fp32_bytes / 4, rel=0.01)


def test_stage_copies_sidecar_files_and_records_sizes(bert, tmp_path):
    src = onnx_artifact_dir(bert.hf, bert.onnx, tmp_path / "export")
    ctx = context(tmp_path / "out")
    config = QuantizeConfig(mode="dynamic", per_channel=True, reduce_range=True)
    result = run(config, Artifact(src, "onnx", {}), ctx)
    assert result.kind == "onnx" and result.path == ctx.out_dir
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        assert (ctx.out_dir / name).read_bytes() == (src / name).read_bytes()
    assert not (ctx.out_dir / "manifest.json").exists()  # the pipeline writes the stage's own manifest
    metrics = result.manifest["metrics"]
    assert metrics["size_bytes"] == (ctx.out_dir / "model.onnx").stat().st_size
    assert metrics["size_ratio"] < 0.6
    feeds = example_inputs()
    assert logits_error(run_onnx(bert.onnx, feeds), run_onnx(ctx.out_dir / "model.onnx", feeds)) < 0.10


def test_stage_is_registered_onnx_to_onnx():
    spec = STAGES["quantize"]
    assert (spec.consumes, spec.produces, spec.config) == ("onnx", "onnx", QuantizeConfig)


def test_nodes_to_exclude_stay_float(bert, tmp_path):
    model = onnx.load(str(bert.onnx))
    first_matmul = next(n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in {i.name for i in model.graph.initializer})
    src = onnx_artifact_dir(bert.hf, bert.onnx, tmp_path / "export")
    ctx = context(tmp_path / "out")
    run(QuantizeConfig(nodes_to_exclude=[first_matmul]), Artifact(src, "onnx", {}), ctx)
    quant = onnx.load(str(ctx.out_dir / "model.onnx"))
    assert first_matmul in {n.name for n in quant.graph.node if n.op_type == "MatMul"}
    assert sum(n.op_type == "MatMulInteger" for n in quant.graph.node) >= 11


# --- known traps of this stack, one regression test each ------------------------------------------


def test_trap_preprocess_is_skipped(bert, tmp_path, monkeypatch):
    """quant_pre_process cannot infer these exports' shapes; the stage must not depend on it."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    monkeypatch.chdir(tmp_path)  # pre-processing drops temporary files into the working directory

    with pytest.raises(Exception, match="symbolic shape inference"):
        quant_pre_process(str(bert.onnx), str(tmp_path / "pre.onnx"))
    dst = quantize_dynamic_int8(bert.onnx, tmp_path / "q.onnx")
    feeds = example_inputs()
    assert logits_error(run_onnx(bert.onnx, feeds), run_onnx(dst, feeds)) < 0.10


def test_trap_dynamo_value_info_is_cleared(bert, tmp_path):
    """A dynamo export's value_info conflicts with the quantizer's shape inference unless cleared."""
    dyn = export_dynamo(bert.model, tmp_path / "dyn.onnx")
    assert len(onnx.load(str(dyn)).graph.value_info) > 0  # the precondition of the trap
    dst = quantize_dynamic_int8(dyn, tmp_path / "q.onnx")
    feeds = example_inputs()
    assert logits_error(run_onnx(dyn, feeds), run_onnx(dst, feeds)) < 0.10
    assert any(n.op_type == "MatMulInteger" for n in onnx.load(str(dst)).graph.node)


def test_trap_fused_graph_gets_default_tensor_type(bert, tmp_path):
    """An O2-fused graph (contrib ops) cannot be typed by shape inference; the stage sets the type."""
    fused = fuse_o2(bert.onnx, tmp_path / "o2.onnx")
    ops = {n.op_type for n in onnx.load(str(fused)).graph.node}
    assert {"Attention", "SkipLayerNormalization"} <= ops  # the precondition of the trap
    dst = quantize_dynamic_int8(fused, tmp_path / "q.onnx")
    feeds = example_inputs()
    assert logits_error(run_onnx(bert.onnx, feeds), run_onnx(dst, feeds)) < 0.10


# --- bad input -------------------------------------------------------------------------------------


def test_missing_onnx_file_is_one_line_error(tmp_path):
    with pytest.raises(EdgeslimError, match="no ONNX model") as err:
        quantize_dynamic_int8(tmp_path / "absent.onnx", tmp_path / "q.onnx")
    assert "\n" not in str(err.value)


def test_stage_on_folder_without_model_is_one_line_error(tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(EdgeslimError, match="needs an ONNX artifact") as err:
        run(QuantizeConfig(), Artifact(tmp_path / "in", "onnx", {}), context(tmp_path / "out"))
    assert "\n" not in str(err.value)


def test_unknown_config_key_is_rejected():
    with pytest.raises(ValueError, match="per_chanel"):
        QuantizeConfig(per_chanel=True)


def test_dynamic_exclusion_of_a_gemm_keeps_it_float(bert, tmp_path):
    """Dynamic mode renames a Gemm to '<name>_MatMul' before checking exclusions; excluding it must work."""
    dst = quantize_dynamic_int8(bert.onnx, tmp_path / "all.onnx")
    assert "/classifier/Gemm_MatMul_quant" in {n.name for n in onnx.load(str(dst)).graph.node}
    src = onnx_artifact_dir(bert.hf, bert.onnx, tmp_path / "export")
    ctx = context(tmp_path / "out")
    run(QuantizeConfig(nodes_to_exclude=["/classifier/Gemm"]), Artifact(src, "onnx", {}), ctx)
    names = {n.name: n.op_type for n in onnx.load(str(ctx.out_dir / "model.onnx")).graph.node}
    assert "/classifier/Gemm_MatMul_quant" not in names and "/bert/pooler/dense/Gemm_MatMul_quant" in names


# --- bad values fail when the recipe loads (edgeslim check), one line naming the key ---------------

RECIPE = """name: q
task: text-classification
teacher:
  build: {{model_type: bert, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64}}
  train_tokenizer: {{vocab_size: 100}}
data:
  source: data.csv
stages:
  - export: {{}}
  - quantize:
{body}
"""


@pytest.mark.parametrize("body,message", [
    ("      mode: weight_only\n      bits: 3", "bits must be 4 or 8, not 3"),
    ("      mode: dynamic\n      bits: 4", "mode 'dynamic' is INT8 only"),
    ("      mode: weight_only\n      block_size: 24", "block_size must be a power of two >= 16, not 24"),
    ("      mode: weight_only\n      block_size: 8", "block_size must be a power of two >= 16, not 8"),
    ("      mode: static\n      calibration_samples: 0", "calibration set cannot be empty"),
    ("      mode: weight_only\n      algorithm: awq", "unknown algorithm 'awq' for mode weight_only"),
    ("      mode: neural_compressor\n      algorithm: hqq", "unknown algorithm 'hqq' for mode neural_compressor"),
    ("      mode: static\n      calibration: kl", "unknown calibration method 'kl'"),
    ("      mode: static\n      format: qlinear", "unknown format 'qlinear'"),
    ("      mode: int4", "unknown mode 'int4'"),
    ("      mode: weight_only\n      accuracy_level: 7", "accuracy_level must be 0, 1, 2, 3 or 4"),
    ("      candidates:\n        - {mode: weight_only, bits: 2}", "bits must be 4 or 8, not 2"),
    ("      max_accuracy_drop: -0.1", "greater than or equal to 0"),
    ("      mode: dynamic\n      autotune: true", "autotune is neural-compressor's"),
    ("      mode: weight_only\n      algorithm: hqq\n      symmetric: true", "hqq is asymmetric only"),
    ("      mode: weight_only\n      algorithm: offset\n      symmetric: true", "offset is asymmetric only"),
    ("      mode: weight_only\n      algorithm: offset\n      bits: 8", "offset writes 4-bit weights; set bits: 4"),
    ("      mode: weight_only\n      algorithm: gptq", "use mode: neural_compressor with algorithm: gptq"),
    ("      mode: dynamic\n      block_size: 64", "'block_size' is a key of mode weight_only / neural_compressor, not of mode dynamic"),
    ("      candidates:\n        - {mode: static, symmetric: true}", "'symmetric' is a key of mode weight_only"),
    ("      mode: weight_only\n      bitz: 4", "quantize.bitz: unknown key"),
])
def test_bad_values_fail_at_check_time_with_one_line(tmp_path, body, message):
    from edgeslim.recipe import load_recipe

    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(body=body))
    with pytest.raises(EdgeslimError) as err:
        load_recipe(path)
    text = str(err.value)
    assert message in text and "\n" not in text
    assert "quantize" in text and "recipe.yaml:" in text


def test_valid_quantize_recipe_loads(tmp_path):
    from edgeslim.recipe import load_recipe

    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(body="      candidates:\n        - {mode: dynamic, per_channel: true}\n"
                                       "        - {mode: weight_only, algorithm: hqq, block_size: 64}\n"
                                       "      max_accuracy_drop: 0.01"))
    stage = load_recipe(path).stages[1].config
    assert [s.label() for s in stage.specs()] == ["dynamic-int8-pc", "weight_only-hqq-int4-b64"]


def test_chosen_model_with_external_data_is_placed_under_the_artifact_name(bert, tmp_path):
    from edgeslim.quantize.stage import place_model

    model = onnx.load(str(bert.onnx))
    (tmp_path / "cand").mkdir()
    onnx.save_model(model, str(tmp_path / "cand" / "x.onnx"), save_as_external_data=True, location="x.onnx.data",
                    size_threshold=0)
    (tmp_path / "out").mkdir()
    place_model(tmp_path / "cand" / "x.onnx", tmp_path / "out" / "model.onnx")
    import shutil

    shutil.rmtree(tmp_path / "cand")  # the saved model must not point back at the candidate's files
    assert (tmp_path / "out" / "model.onnx.data").is_file()
    feeds = example_inputs()
    np.testing.assert_allclose(run_onnx(tmp_path / "out" / "model.onnx", feeds), run_onnx(bert.onnx, feeds), atol=1e-6)


def test_trap_static_on_fused_graph_gets_types_from_onnxruntime(bert, tmp_path):
    """Static QDQ skips every tensor it cannot type; past fused contrib ops ONNX inference types none."""
    from edgeslim.quantize.ort import quantize_static

    fused = fuse_o2(bert.onnx, tmp_path / "o2.onnx")
    dst = quantize_static(fused, tmp_path / "q.onnx", [example_inputs(1, 10, seed=i) for i in range(4)])
    graph = onnx.load(str(dst)).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    weight_matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in dequantized]
    float_matmuls = [n for n in onnx.load(str(fused)).graph.node if n.op_type == "MatMul"]
    assert len(float_matmuls) == 6 and len(weight_matmuls) == 6  # output dense, FFN in and out, per layer
    assert all(n.input[0] in dequantized for n in weight_matmuls)  # activations quantized too
    assert run_onnx(dst, example_inputs()).shape == (2, 2)  # closeness: test_quantize_modes (trained model)


def test_each_mode_is_its_own_config_class():
    from edgeslim.quantize.specs import DynamicSpec, NeuralCompressorSpec, StaticSpec, WeightOnlySpec, make_spec

    kinds = {"dynamic": DynamicSpec, "static": StaticSpec, "weight_only": WeightOnlySpec,
             "neural_compressor": NeuralCompressorSpec}
    for mode, cls in kinds.items():
        spec = make_spec(mode=mode)
        assert type(spec) is cls and spec.mode == mode and spec.weight_ops()
    assert make_spec().label() == "dynamic-int8" and make_spec(mode="weight_only").label() == "weight_only-rtn-int4-b32"
    assert "Gather" not in make_spec(mode="weight_only").weight_ops()  # weight-only leaves embeddings by default
    assert make_spec(mode="static").needs_calibration and not make_spec(mode="weight_only").needs_calibration
    assert make_spec(mode="neural_compressor", algorithm="gptq").needs_calibration
