"""Token-level KD of a tiny Llama through the ``distill`` stage with each divergence (forward KL,
reverse KL, JSD; full vocabulary and top-k cached teacher logits): the student ends closer to the
teacher than the layer-selected student it started from, measured independently on held-out text,
and the distilled student exports with a KV cache, quantizes to INT4 and decodes through
onnxruntime exactly as torch does; a student distilled through the 4-bit offset grid
(quantization-aware) quantizes to exactly the logits it trained with."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from edgeslim.artifacts import Artifact
from edgeslim.compress.distill import run as run_distill
from edgeslim.compress.distill_config import DistillConfig
from edgeslim.compress.students import build_student
from edgeslim.data import DataBundle, Example
from edgeslim.export.onnx import export_onnx
from edgeslim.artifacts import copy_sidecar_files
from edgeslim.quantize.specs import make_spec, quantize_with
from edgeslim.stage import StageContext
from edgeslim.report.lm_eval import OnnxDecoder, TorchDecoder
from _llm_models import SENTENCES, tiny_llama_folder

EXTRA = [
    "The baker sold warm bread to the river boats every morning.",
    "A robot tuned the guitar and the library fell silent.",
    "Rain falls on the orchard and the bees stay in the hive.",
    "The engineer wrote 3 letters about the old bridge.",
]


class _Recipe:
    task = "causal-lm"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    folder = tiny_llama_folder(tmp_path_factory.mktemp("llm-teacher"), seed=5, scale=3.0)
    texts = [Example(t) for t in SENTENCES + EXTRA]
    return folder, DataBundle(texts[:12], texts[12:], [], 32)


def _mean_token_kl(teacher, student, tokenizer, texts) -> float:
    """Mean over held-out tokens of KL(teacher || student) of the next-token distributions."""
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            t = F.log_softmax(teacher(input_ids=ids).logits[0].double(), -1)
            s = F.log_softmax(student(input_ids=ids).logits[0].double(), -1)
            total += float((t.exp() * (t - s)).sum())
            count += ids.shape[1]
    return total / count


def _distill(parent, bundle, teacher_dir, **config):
    out = parent / "stages" / f".01-distill.tmp-{time.monotonic_ns()}"
    out.mkdir(parents=True)
    ctx = StageContext(out_dir=out, recipe=_Recipe(), data=bundle, quiet=True,
                       teacher=Artifact(teacher_dir, "torch", {"key": "teacher-" + teacher_dir.name}))
    return run_distill(DistillConfig(**config), ctx.teacher, ctx)


@pytest.mark.parametrize("kind,top_k", [("forward_kl", None), ("forward_kl", 64), ("reverse_kl", 64), ("jsd", 64)])
def test_token_kd_brings_the_student_closer(teacher, tmp_path, kind, top_k):
    teacher_dir, data = teacher
    model = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    start = build_student(model, {"every": 2}, None, AutoModelForCausalLM).eval()
    before = _mean_token_kl(model, start, tokenizer, [ex.text for ex in data.train])
    art = _distill(tmp_path, data, teacher_dir, layers={"every": 2}, max_steps=25, batch_size=4, lr=3e-3,
                   temperature=1.0, alpha=1.0, checkpoint_every=0, data="labeled",
                   losses={"tokens": {"kind": kind, "top_k": top_k}})
    student = AutoModelForCausalLM.from_pretrained(art.path).eval()
    assert student.config.num_hidden_layers == 2
    after = _mean_token_kl(model, student, tokenizer, [ex.text for ex in data.train])
    assert after < 0.8 * before, (kind, top_k, before, after)


def test_distilled_student_exports_quantizes_and_decodes(teacher, tmp_path):
    teacher_dir, data = teacher
    art = _distill(tmp_path, data, teacher_dir, layers={"every": 2}, max_steps=5, batch_size=4, lr=3e-3,
                   checkpoint_every=0, losses={"tokens": {"kind": "jsd", "top_k": 8}})
    export_onnx(art.path, tmp_path / "onnx", "causal-lm")
    (tmp_path / "int4").mkdir()
    copy_sidecar_files(tmp_path / "onnx", tmp_path / "int4")
    quantize_with(make_spec(mode="weight_only", bits=4, block_size=32), tmp_path / "onnx" / "model.onnx",
                  tmp_path / "int4" / "model.onnx")
    import onnx

    fp32_ops = [n.op_type for n in onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph.node]
    int4_nodes = onnx.load(str(tmp_path / "int4" / "model.onnx")).graph.node
    assert "FusedMatMul" in fp32_ops  # the tied head reads the embedding table
    heads = [n for n in int4_nodes if n.op_type == "MatMulNBits"
             and next(a.i for a in n.attribute if a.name == "N") == len(AutoTokenizer.from_pretrained(art.path))]
    assert len(heads) == 1 and "FusedMatMul" not in [n.op_type for n in int4_nodes]  # the head is INT4 too
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "int4")
    torch_decoder = TorchDecoder(art.path)
    fp32 = OnnxDecoder(tmp_path / "onnx" / "model.onnx", threads=1)
    int4 = OnnxDecoder(tmp_path / "int4" / "model.onnx", threads=1)
    assert fp32.has_cache and int4.has_cache
    for text in EXTRA:
        ids = tokenizer(" ".join(text.split()[:4]), return_tensors="np")["input_ids"].astype(np.int64)
        assert fp32.greedy(ids, 20) == torch_decoder.greedy(ids, 20)
        assert len(int4.greedy(ids, 20)) == 20


def test_a_qad_student_quantizes_to_the_logits_it_trained_with(teacher, tmp_path):
    """Distilled through the offset grid, exported and quantized with algorithm offset (float
    activations): the INT4 ONNX model computes what the fake-quantized torch student computes."""
    from edgeslim.compress.fake_quant import fake_quantized

    teacher_dir, data = teacher
    art = _distill(tmp_path, data, teacher_dir, layers={"every": 2}, max_steps=8, batch_size=4, lr=3e-3,
                   checkpoint_every=0, losses={"tokens": {"kind": "forward_kl"}},
                   quantization_aware={"grid": "offset", "block_size": 32})
    assert art.manifest["quantization_aware"] == {"grid": "offset", "block_size": 32}
    export_onnx(art.path, tmp_path / "onnx", "causal-lm")
    (tmp_path / "int4").mkdir()
    copy_sidecar_files(tmp_path / "onnx", tmp_path / "int4")
    quantize_with(make_spec(mode="weight_only", algorithm="offset", block_size=32, quantize_embeddings=True),
                  tmp_path / "onnx" / "model.onnx", tmp_path / "int4" / "model.onnx")
    student = AutoModelForCausalLM.from_pretrained(art.path).eval()
    ids = np.array([[1, 5, 9, 14, 22, 30]], np.int64)
    with torch.no_grad(), fake_quantized(student, 32, "offset"):
        expected = student(input_ids=torch.from_numpy(ids)).logits[0].numpy()
    with torch.no_grad():
        plain_error = np.abs(student(input_ids=torch.from_numpy(ids)).logits[0].numpy() - expected).max()
    decoder = OnnxDecoder(tmp_path / "int4" / "model.onnx", threads=1)
    onnx_logits = decoder.decoder.forward(ids, None, ids.shape[1])[0][0]
    assert np.abs(onnx_logits - expected).max() < 1e-3 * np.abs(expected).max()
    assert plain_error > 1e-2 * np.abs(expected).max()  # the grid matters: float weights differ
