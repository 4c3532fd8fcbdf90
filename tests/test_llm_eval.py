"""Causal-LM validation on a tiny Llama: export with a KV cache, INT4 weight-only quantization, greedy
generation through onnxruntime equal to torch for 20 tokens, perplexity equal to transformers' own
loss, decode measurement, and every bad input of :mod:`edgeslim.report.lm_eval`."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from edgeslim.artifacts import Artifact
from edgeslim.errors import EdgeslimError
from edgeslim.export.onnx import export_onnx
from edgeslim.artifacts import copy_sidecar_files
from edgeslim.quantize.specs import make_spec, quantize_with
from edgeslim.report.lm_eval import OnnxDecoder, measure_decode, score_causal_lm
from _llm_models import SENTENCES, tiny_llama_folder

PROMPTS = ["The river runs", "A small robot learned to", "She wrote 12 letters", "Clouds"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny Llama (torch), its KV-cache ONNX export and an INT4 MatMulNBits version of that."""
    root = tmp_path_factory.mktemp("llm-eval")
    torch_dir = tiny_llama_folder(root / "torch", seed=3)
    onnx_dir = root / "onnx"
    export_onnx(torch_dir, onnx_dir, "causal-lm")
    int4_dir = root / "int4"
    int4_dir.mkdir()
    copy_sidecar_files(onnx_dir, int4_dir)
    quantize_with(make_spec(mode="weight_only", bits=4, block_size=32), onnx_dir / "model.onnx", int4_dir / "model.onnx")
    return {"torch": Artifact(torch_dir, "torch", {}), "onnx": Artifact(onnx_dir, "onnx", {}),
            "int4": Artifact(int4_dir, "onnx", {})}


def _reference_greedy(model, tokenizer, prompt: str, steps: int) -> list[int]:
    """Greedy decoding without any cache: the whole sequence is re-run for every token."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(input_ids=ids, use_cache=False).logits[0, -1].argmax())
            out.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out


def test_export_has_kv_cache(models):
    graph = onnx.load(str(models["onnx"].onnx_path), load_external_data=False).graph
    inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    assert {"input_ids", "attention_mask", "position_ids"} <= inputs
    assert {f"past_key_values.{i}.{kv}" for i in range(4) for kv in ("key", "value")} <= inputs
    assert {f"present.{i}.{kv}" for i in range(4) for kv in ("key", "value")} <= outputs


def test_onnx_greedy_matches_torch_for_20_tokens(models):
    model = AutoModelForCausalLM.from_pretrained(models["torch"].path).eval()
    tokenizer = AutoTokenizer.from_pretrained(models["torch"].path)
    decoder = OnnxDecoder(models["onnx"].onnx_path, threads=1)
    assert decoder.has_cache
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="np")["input_ids"].astype(np.int64)
        expected = _reference_greedy(model, tokenizer, prompt, 20)
        assert decoder.greedy(ids, 20) == expected
        assert len(set(expected)) > 1  # the tiny model is decisive enough for the comparison to mean something


def test_score_torch_and_onnx_agree_and_match_transformers_loss(models):
    torch_score = score_causal_lm(models["torch"], SENTENCES, PROMPTS, max_length=64, new_tokens=20)
    onnx_score = score_causal_lm(models["onnx"], SENTENCES, PROMPTS, max_length=64, new_tokens=20)
    assert len(torch_score["predictions"]) == len(PROMPTS) * 20
    assert onnx_score["predictions"] == torch_score["predictions"]
    # Perplexity from transformers' own shifted cross-entropy, token-weighted over the texts.
    model = AutoModelForCausalLM.from_pretrained(models["torch"].path).eval()
    tokenizer = AutoTokenizer.from_pretrained(models["torch"].path)
    total, count = 0.0, 0
    with torch.no_grad():
        for text in SENTENCES:
            ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=64)["input_ids"]
            loss = model(input_ids=ids, labels=ids).loss
            total += float(loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    expected = math.exp(total / count)
    assert torch_score["perplexity"] == pytest.approx(expected, rel=1e-5)
    assert onnx_score["perplexity"] == pytest.approx(expected, rel=1e-4)
    assert torch_score["params"] == sum(p.numel() for p in model.parameters())
    assert onnx_score["params"] > 0


def test_int4_is_matmulnbits_smaller_and_still_scores(models):
    graph = onnx.load(str(models["int4"].onnx_path), load_external_data=False).graph
    assert sum(node.op_type == "MatMulNBits" for node in graph.node) >= 4 * 4  # qkv (joined), o, gate-up (joined), down
    assert models["int4"].size_bytes() < models["onnx"].size_bytes()
    fp32 = score_causal_lm(models["onnx"], SENTENCES, PROMPTS, max_length=64, new_tokens=20)
    int4 = score_causal_lm(models["int4"], SENTENCES, PROMPTS, max_length=64, new_tokens=20)
    assert len(int4["predictions"]) == len(fp32["predictions"])
    assert math.isfinite(int4["perplexity"]) and int4["perplexity"] > 1.0
    # 4-bit weights change the model, but not beyond recognition: same order of perplexity.
    assert 0.5 < int4["perplexity"] / fp32["perplexity"] < 2.0


def test_measure_decode_reports_a_measured_cell(models):
    tokenizer = AutoTokenizer.from_pretrained(models["onnx"].path)
    cell = measure_decode(models["onnx"].onnx_path, tokenizer, PROMPTS, threads=1, new_tokens=8, warmup=1, runs=6)
    assert cell["status"] == "measured" and cell["reason"] is None
    latency = cell["latency_ms"]
    assert latency["n"] == 6
    assert 0 < latency["p50"] <= latency["p99"]
    assert cell["decode_tokens_per_s"] > 0 and cell["throughput"] > 0
    assert cell["peak_memory_mb"] is not None and cell["peak_memory_mb"] > 0


def test_no_cache_decoder_gives_the_same_tokens(models, tmp_path):
    """A decoder exported without a KV cache (dynamo) is re-run on the whole sequence each step."""
    out = tmp_path / "dynamo"
    export_onnx(models["torch"].path, out, "causal-lm", exporter="dynamo", fusions=False, slim=False)
    decoder = OnnxDecoder(out / "model.onnx", threads=1)
    assert not decoder.has_cache
    cached = OnnxDecoder(models["onnx"].onnx_path, threads=1)
    tokenizer = AutoTokenizer.from_pretrained(models["torch"].path)
    ids = tokenizer(PROMPTS[1], return_tensors="np")["input_ids"].astype(np.int64)
    assert decoder.greedy(ids, 12) == cached.greedy(ids, 12)


def test_bad_inputs_are_one_line_errors(models, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(models["onnx"].path)
    onnx_path = models["onnx"].onnx_path
    cases = [
        (lambda: score_causal_lm(models["torch"], ["a"], PROMPTS, 64), "at least two tokens"),
        (lambda: score_causal_lm(models["torch"], SENTENCES, PROMPTS, 64, new_tokens=0), "new_tokens"),
        (lambda: score_causal_lm(models["onnx"], SENTENCES, [""], 64), "tokenizes to nothing"),
        (lambda: score_causal_lm(Artifact(models["onnx"].path, "weird", {}), SENTENCES, PROMPTS, 64), "kind"),
        (lambda: score_causal_lm(Artifact(tmp_path, "torch", {}), SENTENCES, PROMPTS, 64), "cannot load"),
        (lambda: measure_decode(onnx_path, tokenizer, [], threads=1, new_tokens=4, warmup=0, runs=2), "prompt"),
        (lambda: measure_decode(onnx_path, tokenizer, PROMPTS, threads=1, new_tokens=1, warmup=0, runs=2), "new_tokens"),
        (lambda: measure_decode(tmp_path / "missing.onnx", tokenizer, PROMPTS, threads=1, new_tokens=4, warmup=0,
                                runs=2), "no ONNX model"),
    ]
    for call, fragment in cases:
        with pytest.raises(EdgeslimError) as info:
            call()
        message = str(info.value)
        assert fragment in message and "\n" not in message


def test_teacher_int8_baseline_works_on_a_kv_cache_decoder(models, tmp_path):
    """The pipeline's teacher-int8 baseline (plain dynamic INT8) on a causal LM exported with a cache."""
    from edgeslim.quantize.specs import quantize_dynamic_int8

    copy_sidecar_files(models["onnx"].path, tmp_path)
    quantize_dynamic_int8(models["onnx"].onnx_path, tmp_path / "model.onnx")
    int8 = Artifact(tmp_path, "onnx", {})
    assert int8.size_bytes() < models["onnx"].size_bytes()
    fp32 = score_causal_lm(models["onnx"], SENTENCES, PROMPTS, max_length=64, new_tokens=20)
    score = score_causal_lm(int8, SENTENCES, PROMPTS, max_length=64, new_tokens=20)
    assert len(score["predictions"]) == len(fp32["predictions"])
    assert 0.5 < score["perplexity"] / fp32["perplexity"] < 2.0
