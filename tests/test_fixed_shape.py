"""``bundle.fixed_shape``: a fixed-shape ``model_fixed.ort`` that onnxruntime's mobile usability check
passes for NNAPI and CoreML, and that computes what the dynamic model computes.

Tiny encoders from configs (fixed seeds, classifier weights scaled up so that a wrong position or mask
shows in the logits) are saved as torch artifacts, exported by edgeslim's export, and bundled by the
registered stage function, which finds the torch model through the artifacts' manifests.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from edgeslim.artifacts import MANIFEST, Artifact
from edgeslim.data import DataBundle, Example
from edgeslim.errors import EdgeslimError
from edgeslim.export.bundle_config import BundleConfig
from edgeslim.export.fixed_shape import static_rewrites
from edgeslim.export.onnx import export_onnx
from edgeslim.stage import STAGES, StageContext
from test_export import TEXTS, tokenizer

LENGTH = 24
LABELS = ["negative", "neutral", "positive"]
MOBILE_PROVIDERS = ("nnapi", "coreml_neuralnetwork", "coreml_mlprogram")


def encoder_lineage(root: Path, model_type: str) -> Artifact:
    """A torch artifact of a tiny ``model_type`` classifier and its fp32 export, linked by manifests."""
    config = AutoConfig.for_model(model_type, vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, num_labels=3, max_position_embeddings=64)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    with torch.no_grad():  # random heads give near-zero logits; large ones make every difference visible
        for name, parameter in model.named_parameters():
            if "classifier" in name and name.endswith("weight"):
                parameter.mul_(200.0)
    model.save_pretrained(root / "torch")
    tokenizer().save_pretrained(root / "torch")
    (root / "torch" / MANIFEST).write_text(json.dumps({"kind": "torch", "name": "distill"}))
    export_onnx(root / "torch", root / "onnx", "text-classification")
    (root / "onnx" / MANIFEST).write_text(json.dumps({"kind": "onnx", "name": "export",
                                                      "input": {"path": str(root / "torch")}}))
    return Artifact.load(root / "onnx")


def bundle_with_fixed_shape(root: Path, source: Artifact, **options) -> Artifact:
    data = DataBundle(train=[], eval=[Example(t, i % 3) for i, t in enumerate(TEXTS)], labels=LABELS, max_length=LENGTH)
    recipe = SimpleNamespace(task="text-classification", name="tiny", fingerprint=lambda: "0123abcd")
    (root / "bundle").mkdir()
    ctx = StageContext(out_dir=root / "bundle", recipe=recipe, data=data, quiet=True)
    config = BundleConfig(fixed_shape=True, ort_format=False, tokenizer_in_graph=False, **options)
    return STAGES["bundle"].run(config, source, ctx)


@pytest.fixture(scope="module", params=["bert", "roberta"])
def fixed_bundle(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    source = encoder_lineage(root, request.param)
    return bundle_with_fixed_shape(root, source), source


def test_mobile_usability_check_passes_for_nnapi_and_coreml(fixed_bundle):
    artifact, _ = fixed_bundle
    usability = artifact.manifest["fixed_shape"]["mobile_usability"]
    assert usability["dynamic_inputs"] == []
    for provider in MOBILE_PROVIDERS:
        entry = usability["providers"][provider]
        assert entry["verdict"] == "YES" and entry["partitions"] == 1, (provider, entry)
    assert usability["providers"]["nnapi"]["unsupported_ops"] == []
    assert usability["providers"]["coreml_neuralnetwork"]["unsupported_ops"] == []


def test_fixed_model_has_int32_inputs_of_the_fixed_shape_and_matches_the_dynamic_model(fixed_bundle):
    artifact, source = fixed_bundle
    fixed = ort.InferenceSession(str(artifact.path / "model_fixed.ort"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type, i.shape) for i in fixed.get_inputs()] == [
        ("input_ids", "tensor(int32)", [1, LENGTH]), ("attention_mask", "tensor(int32)", [1, LENGTH])]
    dynamic = ort.InferenceSession(str(source.onnx_path), providers=["CPUExecutionProvider"])
    tok = tokenizer()
    spread = []
    for text in TEXTS[:6]:
        padded = tok([text], padding="max_length", truncation=True, max_length=LENGTH, return_tensors="np")
        got = fixed.run(None, {n: padded[n].astype(np.int32) for n in ("input_ids", "attention_mask")})[0]
        plain = tok([text], truncation=True, max_length=LENGTH, return_tensors="np")
        want = dynamic.run(None, {i.name: plain[i.name].astype(np.int64) for i in dynamic.get_inputs()})[0]
        np.testing.assert_allclose(got, want, atol=5e-3)
        spread.append(float(np.ptp(want)))
    assert max(spread) > 0.1  # the logits move enough that a wrong position or mask would show
    parity = artifact.manifest["fixed_shape"]["parity"]
    assert parity["max_abs_vs_dynamic"] <= 5e-3 and parity["argmax_agreement"] == 1.0
    assert artifact.manifest["metrics"]["fixed_max_abs_vs_dynamic"] == parity["max_abs_vs_dynamic"]


def test_the_card_and_metadata_describe_the_fixed_model(fixed_bundle):
    artifact, _ = fixed_bundle
    card = (artifact.path / "README.md").read_text()
    assert "## Mobile accelerators: `model_fixed.ort`" in card and "addNnapi()" in card
    assert "appendCoreMLExecutionProvider" in card and f"[1, {LENGTH}]" in card
    sidecar = json.loads((artifact.path / "edgeslim.json").read_text())
    assert sidecar["fixed_shape"]["sequence_length"] == LENGTH and "model_fixed.ort" in sidecar["files"]
    assert (artifact.path / "model_fixed.required_operators.config").read_text().startswith("#")
    assert "model_fixed.ort" in artifact.manifest["nondeterministic_files"]


def test_a_model_further_off_than_fixed_atol_fails_and_leaves_no_fixed_file(tmp_path):
    source = encoder_lineage(tmp_path, "bert")
    with pytest.raises(EdgeslimError, match="differs from the dynamic model by .* > bundle.fixed_atol 1e-12"):
        bundle_with_fixed_shape(tmp_path, source, fixed_atol=1e-12)
    assert not (tmp_path / "bundle" / "model_fixed.ort").exists()


def test_without_the_torch_model_it_says_what_to_do(tmp_path):
    source = encoder_lineage(tmp_path, "bert")
    (tmp_path / "torch" / MANIFEST).unlink()  # the stage folder before the export is gone
    with pytest.raises(EdgeslimError, match="needs the torch model the release was exported from"):
        bundle_with_fixed_shape(tmp_path, Artifact.load(source.path))


def test_fixed_shape_is_refused_for_a_causal_lm_and_beyond_the_model_positions():
    with pytest.raises(ValueError, match="fixed_shape is for text-classification bundles, not causal-lm"):
        BundleConfig(fixed_shape=True).check_against(None, "causal-lm")
    BundleConfig(fixed_shape=True).check_against(None, "text-classification")
    shape = SimpleNamespace(max_position_embeddings=64)
    with pytest.raises(ValueError, match="fixed_length 128 is longer than the model's 64 positions; use at most 64"):
        BundleConfig(fixed_shape=True, fixed_length=128).check_against(shape, "text-classification")
    BundleConfig(fixed_shape=True, fixed_length=64).check_against(shape, "text-classification")


def test_static_rewrites_turn_shape_ops_into_slice_and_reshape(tmp_path):
    """Unsqueeze, Squeeze and a Gather of a constant row become Reshape / Slice, with the same result."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Unsqueeze", ["x", "axes"], ["u"]),
             helper.make_node("Gather", ["u", "row"], ["g"], axis=2),
             helper.make_node("Squeeze", ["g", "axes"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
                              [numpy_helper.from_array(np.array([0], dtype=np.int64), "axes"),
                               numpy_helper.from_array(np.array(-1, dtype=np.int64), "row")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8), str(path))
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert static_rewrites(path) == 3
    rewritten = onnx.load(str(path))
    assert sorted(n.op_type for n in rewritten.graph.node) == ["Reshape", "Reshape", "Reshape", "Slice"]
    after = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(after, before)
    assert after.shape == (2, 4) and np.array_equal(after, x[:, -1, :])


def test_a_pipeline_artifact_leads_back_through_its_stages_to_the_teacher(tiny_run):
    """What fixed_shape relies on: each finished stage's manifest names the folder it read."""
    stages = sorted(p for p in (tiny_run[0] / "stages").iterdir() if p.is_dir() and not p.name.startswith("."))
    lineage = list(Artifact.load(stages[-1]).lineage())
    assert [a.path for a in lineage] == list(reversed(stages))
    assert [a.kind for a in lineage] == ["onnx", "onnx", "torch", "torch"]


def test_check_refuses_fixed_shape_in_a_causal_lm_recipe(tmp_path, capsys):
    import yaml

    from edgeslim.builtin import resolve_recipe
    from edgeslim.cli import main

    recipe = yaml.safe_load(resolve_recipe("smollm2-edge-quick").read_text())
    if "://" not in recipe["data"]["source"]:  # a path relative to the built-in recipe
        recipe["data"]["source"] = str(resolve_recipe("smollm2-edge-quick").parent / recipe["data"]["source"])
    next(s for s in recipe["stages"] if "bundle" in s)["bundle"]["fixed_shape"] = True
    path = tmp_path / "llm.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["check", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "fixed_shape is for text-classification bundles, not causal-lm" in lines[0], lines
