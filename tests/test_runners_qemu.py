"""The qemu-arm runner: outputs of a small exported BERT (fp32 and INT8) on aarch64 kernels match x86."""

from __future__ import annotations

import numpy as np
import pytest

from edgeslim.errors import EdgeslimError
from edgeslim.targets import qemu_setup
from edgeslim.targets.profile import load_profile
from edgeslim.targets.runners import measure
from edgeslim.targets.runners.parity import compare


@pytest.fixture(scope="module")
def qemu_env():
    try:
        return qemu_setup.ensure(log=lambda message: None)
    except EdgeslimError as exc:
        pytest.skip(f"qemu-arm cannot be set up here: {exc}")


@pytest.fixture(scope="module")
def bert_models(tmp_path_factory):
    """A tiny BERT classifier exported with torch.onnx, and its dynamic INT8 quantization."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("qemu-models")
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32)
    model = BertForSequenceClassification(config).eval()
    ids = torch.randint(0, 64, (1, 12))
    fp32 = folder / "fp32.onnx"
    torch.onnx.export(model, (ids, torch.ones_like(ids)), str(fp32), input_names=["input_ids", "attention_mask"],
                      output_names=["logits"], dynamic_axes={"input_ids": {0: "b", 1: "s"},
                                                             "attention_mask": {0: "b", 1: "s"}},
                      opset_version=17, dynamo=False)
    int8 = folder / "int8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    return {"fp32": fp32, "int8": int8}


def bert_inputs(count: int = 6) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        length = 6 + 2 * i
        out.append({"input_ids": rng.integers(0, 64, (1, length)).astype(np.int64),
                    "attention_mask": np.ones((1, length), dtype=np.int64)})
    return out


def test_emulated_outputs_match_on_arm_kernels(qemu_env, bert_models, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x00garbage")
    cells = measure(load_profile("raspberry-pi-4"), {**bert_models, "broken": broken}, bert_inputs(),
                    warmup=1, runs=5)
    for name in bert_models:
        cell = cells[name]
        assert cell["status"] == "emulated", cell
        assert cell["latency_ms"] is None and cell["throughput"] is None  # never a latency claim
        assert cell["qemu_cpu"] == "cortex-a72"
        assert cell["outputs_match"] and cell["top1_agreement"] == 1.0, cell
        assert cell["predicted_latency_ms"] > 0
    # fp32 kernels differ only in summation order; INT8 differs in rounding but stays close
    assert cells["fp32"]["max_rel_diff"] < 1e-4
    assert cells["int8"]["max_rel_diff"] < 0.02
    # a model onnxruntime cannot load is that cell's error; the others are still compared
    assert cells["broken"]["status"] == "error" and cells["broken"]["reason"]


def test_compare_flags_a_changed_prediction():
    reference = {"m/0/logits": np.array([[1.0, 2.0]]), "m/1/logits": np.array([[3.0, 1.0]])}
    same = {k: v + 1e-6 for k, v in reference.items()}
    flipped = dict(reference, **{"m/1/logits": np.array([[1.0, 3.0]])})
    ok = compare(reference, same, "m")
    assert ok["outputs_match"] and ok["top1_agreement"] == 1.0
    assert ok["max_abs_diff"] == pytest.approx(1e-6)
    bad = compare(reference, flipped, "m")
    assert not bad["outputs_match"] and bad["top1_agreement"] == 0.5
    assert bad["max_abs_diff"] == pytest.approx(2.0) and bad["max_rel_diff"] == pytest.approx(2.0 / 3.0)


def test_decoders_are_emulated_too_and_their_greedy_tokens_compared(qemu_env, tmp_path_factory):
    """A causal LM goes through the same runner in decode mode: the aarch64 kernels generate greedily
    from the same prompts, and the cell says whether the tokens match x86 (no latency claim)."""
    from _quantize_models import tiny_llama_onnx

    folder = tiny_llama_onnx(tmp_path_factory.mktemp("qemu-llm"))
    prompts = [{"input_ids": np.array([[2, 5, 9, 11]], dtype=np.int64)},
               {"input_ids": np.array([[2, 7, 8]], dtype=np.int64)}]
    cell = measure(load_profile("raspberry-pi-4"), {"lm": folder / "model.onnx"}, prompts, warmup=0, runs=1,
                   mode="decode", new_tokens=4)["lm"]
    assert cell["status"] == "emulated", cell
    assert cell["parity_examples"] == 2 and cell["top1_agreement"] == 1.0 and cell["outputs_match"]
    assert "greedy tokens match x86" in cell["reason"] and cell["latency_ms"] is None


def test_the_int8_probe_judges_the_qemu_in_use_not_the_cpu_name(qemu_env, bert_models, tmp_path):
    """Named cpus and ``max,sme=off`` compute the probe's dynamic-INT8 matmul within INT8 rounding on
    any QEMU; plain ``max`` (SME on) is refused on QEMU 7, whose SME emulation breaks INT8 kernels
    (measured here with 7.2), and with its version named. A profile asking for such a cpu gets error
    cells with that reason, never an ``emulated`` verdict; verdicts are cached per qemu and cpu."""
    cache = tmp_path / "cache"
    version = qemu_setup.qemu_version(qemu_env.qemu)
    assert version[0].isdigit()
    assert qemu_setup.int8_probe(qemu_env, "cortex-a72", cache) is None
    assert qemu_setup.int8_probe(qemu_env, "max,sme=off", cache) is None
    reason = qemu_setup.int8_probe(qemu_env, "max", cache)
    if version.startswith("7."):
        assert reason and f"qemu {version} with -cpu max" in reason and "'max,sme=off'" in reason
    verdicts = (cache / "probe" / "verdicts.json").read_text()
    assert f"|{version}|max|onnxruntime" in verdicts and f"|{version}|cortex-a72|onnxruntime" in verdicts
    if reason:
        profile = load_profile("raspberry-pi-4")
        profile = profile.model_copy(update={"access": profile.access.model_copy(update={"qemu_cpu": "max"})})
        cells = measure(profile, {"int8": bert_models["int8"]}, bert_inputs(2), warmup=0, runs=1)
        assert cells["int8"]["status"] == "error" and "computes INT8 matmuls wrongly" in cells["int8"]["reason"]
