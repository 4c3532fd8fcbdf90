"""Stage ``bundle``: what an app developer receives loads in Optimum, onnxruntime and ORT mobile form.

Tiny models from configs (fixed seeds) are exported with edgeslim's own export, bundled by the real
stage function, and then loaded back through the public loaders an app would use.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgeslim.data import DataBundle, Example
from edgeslim.errors import EdgeslimError
from edgeslim.export.bundle_config import BundleConfig
from edgeslim.export.export_config import ExportConfig
from edgeslim.export.mobile import (build_bundle, build_tokenizer_model, copy_model_folder, read_metadata,
                                    run_tokenizer_model)
from edgeslim.export.model_card import write_model_card
from edgeslim.export.onnx import export_model, export_onnx
from edgeslim.stage import STAGES, StageContext
from test_export import TEXTS, tiny_bert, tiny_llama, tokenizer

LABELS = ["negative", "neutral", "positive"]
LONG_TEXT = " ".join(["this sentence keeps going well past the bundle's maximum length"] * 6)


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def logits_of(sess: ort.InferenceSession, texts, max_length: int = 32) -> np.ndarray:
    enc = tokenizer()(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    feeds = {i.name: enc[i.name].astype(np.int64) for i in sess.get_inputs()}
    return sess.run(["logits"], feeds)[0]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A text-classification bundle made by the registered stage, with real DataBundle metadata."""
    root = tmp_path_factory.mktemp("cls")
    onnx_path = export_onnx(tiny_bert(root / "torch"), root / "onnx", "text-classification")
    data = DataBundle(train=[Example(t, i % 3) for i, t in enumerate(TEXTS)],
                      eval=[Example(t, i % 3) for i, t in enumerate(TEXTS)], labels=LABELS, max_length=32)
    recipe = SimpleNamespace(task="text-classification", name="tiny-sentiment", fingerprint=lambda: "0123abcd")
    ctx = StageContext(out_dir=root / "bundle", recipe=recipe, data=data, quiet=True)
    (root / "bundle").mkdir()
    source = SimpleNamespace(path=onnx_path.parent, manifest={"metrics": {"parity_max_abs": 1e-7}})
    artifact = STAGES["bundle"].run(BundleConfig(), source, ctx)
    return artifact, onnx_path


def test_optimum_loads_bundle_and_predicts_like_edgeslim_evaluation(bundle):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    from edgeslim.report.evaluate import onnx_logits
    from edgeslim.report.matrix import score_artifact

    artifact, source = bundle
    texts = TEXTS + [LONG_TEXT]
    model = ORTModelForSequenceClassification.from_pretrained(artifact.path)
    tok = AutoTokenizer.from_pretrained(artifact.path)
    enc = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    optimum_logits = model(**enc).logits.numpy()
    examples = [Example(text, i % 3) for i, text in enumerate(texts)]
    score = score_artifact(artifact, examples, max_length=32)  # what the report scores the release with
    assert optimum_logits.argmax(-1).tolist() == score["predictions"]
    np.testing.assert_allclose(optimum_logits, onnx_logits(artifact.onnx_path, tok, texts, 32), atol=1e-5)
    np.testing.assert_allclose(optimum_logits, logits_of(session(source), texts), atol=1e-5)  # = the export


def test_ort_format_model_loads_and_matches_onnx(bundle):
    artifact, _ = bundle
    assert (artifact.path / "model.ort").is_file()
    operators = (artifact.path / "required_operators.config").read_text()
    assert "com.microsoft;1;" in operators and "Attention" in operators  # the fused graph's contrib ops
    ort_logits = logits_of(session(artifact.path / "model.ort"), TEXTS + [LONG_TEXT])
    onnx_logits = logits_of(session(artifact.path / "model.onnx"), TEXTS + [LONG_TEXT])
    np.testing.assert_allclose(ort_logits, onnx_logits, atol=1e-5)
    assert artifact.manifest["ort"]["optimization_style"] == "fixed"
    assert not any("with_runtime_opt" in p.name for p in artifact.path.iterdir())


def test_tokenizer_in_graph_gives_same_logits_from_raw_text(bundle):
    artifact, _ = bundle
    path = artifact.path / "model_with_tokenizer.onnx"
    assert artifact.manifest["tokenizer_in_graph"]["written"]
    plain = session(artifact.path / "model.onnx")
    for text in TEXTS + [LONG_TEXT]:  # the long text checks truncation to max_length (32) in the graph
        (got,) = run_tokenizer_model(path, text)
        np.testing.assert_allclose(got, logits_of(plain, [text], max_length=32), atol=1e-5)


def test_metadata_round_trips(bundle):
    artifact, _ = bundle
    sidecar = json.loads((artifact.path / "edgeslim.json").read_text())
    for stored in (read_metadata(artifact.path / "model.onnx"), sidecar):
        assert stored["labels"] == LABELS
        assert stored["max_length"] == 32
        assert stored["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]
        assert stored["output_names"] == ["logits"]
        assert stored["recipe_hash"] == "0123abcd" and stored["recipe"] == "tiny-sentiment"
        assert stored["edgeslim_version"] and stored["task"] == "text-classification"
    assert read_metadata(artifact.path / "model.ort")["labels"] == LABELS  # survives ORT conversion


def test_mobile_usability_and_model_card(bundle, tmp_path):
    artifact, _ = bundle
    usability = artifact.manifest["mobile_usability"]
    assert set(usability["providers"]) == {"nnapi", "coreml_neuralnetwork", "coreml_mlprogram"}
    nnapi = usability["providers"]["nnapi"]
    assert nnapi["verdict"] in {"YES", "MAYBE", "NO"} and nnapi["nodes"] > 0
    assert "com.microsoft:Attention" in nnapi["unsupported_ops"]  # NNAPI has no fused attention kernel
    card = (artifact.path / "README.md").read_text()
    assert "positive" in card and "ORTModelForSequenceClassification" in card and "nnapi" in card
    assert "parity_max_abs" in card
    write_model_card(artifact.path, {"accuracy": 0.91, "latency_ms": {"pixel-7": 3.25}})
    card = (artifact.path / "README.md").read_text()
    assert "| accuracy | 0.91 |" in card and "| latency_ms / pixel-7 | 3.25 |" in card
    assert "parity_max_abs" not in card


def test_causal_lm_bundle_greedy_generation_matches_torch(tmp_path):
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoModelForCausalLM

    model_dir = tiny_llama(tmp_path / "llama")
    export_model(model_dir, tmp_path / "onnx", "causal-lm", ExportConfig(decode_steps=1))
    build_bundle(tmp_path / "onnx", tmp_path / "bundle", "causal-lm", BundleConfig(mobile_check=False))
    onnx_model = ORTModelForCausalLM.from_pretrained(tmp_path / "bundle")
    assert onnx_model.config.use_cache
    torch_model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    enc = tokenizer()(["the weather today is"], return_tensors="pt")
    prompt = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    kwargs = dict(max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        expected = torch_model.generate(**prompt, **kwargs)
    got = onnx_model.generate(**prompt, **kwargs)
    assert got.shape[1] == prompt["input_ids"].shape[1] + 20
    assert torch.equal(got, expected)
    meta = read_metadata(tmp_path / "bundle" / "model.onnx")
    assert "past_key_values.0.key" in meta["input_names"] and meta["labels"] == []


def test_qdq_model_bundles_and_ort_file_loads(bundle, tmp_path):
    """A static-INT8 QDQ model must convert to a loadable model.ort (no runtime-optimization records)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    artifact, _ = bundle
    unfused = export_model(tiny_bert(tmp_path / "torch"), tmp_path / "onnx", "text-classification",
                           ExportConfig(fusions=False, slim=False)).onnx_path
    enc = tokenizer()(TEXTS, truncation=True, max_length=32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter([{k: np.array([v[i]], dtype=np.int64) for k, v in enc.items()} for i in range(len(TEXTS))])

        def get_next(self):
            return next(self.rows, None)

    qdq_dir = tmp_path / "qdq"
    copy_model_folder(unfused.parent, qdq_dir)
    quantize_static(unfused, qdq_dir / "model.onnx", Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    entries = build_bundle(qdq_dir, tmp_path / "bundle", "text-classification",
                           BundleConfig(mobile_check=False, tokenizer_in_graph=False))
    qdq_ops = {n.op_type for n in __import__("onnx").load(str(tmp_path / "bundle" / "model.onnx")).graph.node}
    assert "QuantizeLinear" in qdq_ops
    ort_logits = logits_of(session(tmp_path / "bundle" / "model.ort"), TEXTS)
    onnx_logits = logits_of(session(tmp_path / "bundle" / "model.onnx"), TEXTS)
    np.testing.assert_allclose(ort_logits, onnx_logits, atol=1e-3)
    assert entries["ort"]["max_abs_vs_onnx"] < 1e-3


def test_bundle_keeps_external_data_working(bundle, tmp_path):
    """Large models come with ``model.onnx.data``; metadata and the tokenizer graph must not break it."""
    import onnx

    artifact, source = bundle
    src = tmp_path / "external"
    copy_model_folder(source.parent, src)
    onnx.save(onnx.load(str(source)), str(src / "model.onnx"), save_as_external_data=True,
              location="model.onnx.data", size_threshold=0)
    assert (src / "model.onnx").stat().st_size < 200_000  # the weights really live in the .data file
    build_bundle(src, tmp_path / "bundle", "text-classification", BundleConfig(mobile_check=False),
                 labels=LABELS, max_length=32)
    out = tmp_path / "bundle"
    assert (out / "model.onnx.data").is_file() and read_metadata(out / "model.onnx")["labels"] == LABELS
    expected = logits_of(session(source), TEXTS)
    np.testing.assert_allclose(logits_of(session(out / "model.onnx"), TEXTS), expected, atol=1e-5)
    np.testing.assert_allclose(logits_of(session(out / "model.ort"), TEXTS), expected, atol=1e-5)
    (got,) = run_tokenizer_model(out / "model_with_tokenizer.onnx", TEXTS[0])
    np.testing.assert_allclose(got, expected[:1], atol=1e-5)


def test_unconvertible_tokenizer_is_skipped_with_a_reason(bundle, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1, "good": 2, "bad": 3}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    word_level = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]")
    report = build_tokenizer_model(bundle[0].onnx_path, word_level, tmp_path / "t.onnx", 32)
    assert not report["written"] and "cannot convert PreTrainedTokenizerFast" in report["reason"]
    assert not (tmp_path / "t.onnx").exists()


def test_bad_bundle_inputs_raise_one_line_errors(tmp_path, bundle):
    with pytest.raises(EdgeslimError, match="has no model.onnx; put stage 'bundle' after 'export'"):
        build_bundle(tmp_path, tmp_path / "out", "text-classification", BundleConfig())
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.onnx").write_bytes((bundle[0].path / "model.onnx").read_bytes())
    with pytest.raises(EdgeslimError, match="has no config.json"):
        build_bundle(tmp_path / "src", tmp_path / "out", "text-classification", BundleConfig())
    with pytest.raises(Exception, match="extra"):
        BundleConfig(ort=True)


def test_ort_file_onnxruntime_cannot_read_is_left_out_with_a_reason(tmp_path):
    """A 4-bit embedding (GatherBlockQuantized, UINT4 tensor) converts to an ORT file that
    onnxruntime itself refuses to load: the bundle is still built, without model.ort, saying why."""
    from edgeslim.quantize.specs import make_spec, quantize_with

    model_dir = tiny_llama(tmp_path / "llama")
    export_model(model_dir, tmp_path / "onnx", "causal-lm", ExportConfig(decode_steps=1))
    copy_model_folder(tmp_path / "onnx", tmp_path / "int4")
    quantize_with(make_spec(mode="weight_only", bits=4, block_size=32, quantize_embeddings=True),
                  tmp_path / "onnx" / "model.onnx", tmp_path / "int4" / "model.onnx")
    entries = build_bundle(tmp_path / "int4", tmp_path / "bundle", "causal-lm", BundleConfig(mobile_check=False))
    assert entries["ort"]["written"] is False and "cannot load the ORT file" in entries["ort"]["reason"]
    assert not (tmp_path / "bundle" / "model.ort").exists()
    assert not (tmp_path / "bundle" / "required_operators.config").exists()
    session(tmp_path / "bundle" / "model.onnx")  # the ONNX model itself still loads


def test_the_model_card_has_hub_front_matter_sections_and_app_snippets(bundle):
    """The card: Hub front matter, intended use, limitations and data sections, and code for Optimum,
    onnxruntime, Android (Kotlin) and iOS (Swift) loading model.ort."""
    artifact, _ = bundle
    card = (artifact.path / "README.md").read_text()
    header = card.split("---")[1]
    assert "pipeline_tag: text-classification" in header and "library_name: onnxruntime" in header
    assert "license:" in header and "metrics: [accuracy]" in header
    for section in ("## Intended use", "## Limitations", "## Training and evaluation data", "## Use",
                    "## Measured figures"):
        assert section in card
    assert "```kotlin" in card and "createSession" in card and "```swift" in card and "ORTSession" in card
    assert "ORTModelForSequenceClassification" in card and "ort.InferenceSession" in card
