"""Low-rank factorization: factors are the truncated SVD, ranks follow energy / budget rules, only
FLOP-saving layers are factorized, and the saved folder reloads exactly and exports to two MatMuls."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn
from transformers import AutoModelForSequenceClassification

from edgeslim.compress.lowrank_config import LowRankConfig
from edgeslim.compress.lowrank import (LowRankLinear, factorize, load_factorized, rank_for_energy,
                                       target_linears)
from edgeslim.compress.lowrank import run as run_lowrank
from edgeslim.errors import EdgeslimError
from _compress_fixtures import inputs, logits, stage_context, teacher_artifact, tiny_bert, tiny_llama, tiny_tokenizer


def test_factors_are_the_best_rank_r_approximation():
    torch.manual_seed(0)
    linear = nn.Linear(24, 40)
    module = LowRankLinear.from_linear(linear, 5)
    product = (module.weight @ module.lowrank_in.weight).detach().numpy().astype(np.float64)
    w = linear.weight.detach().numpy().astype(np.float64)
    u, s, vh = np.linalg.svd(w, full_matrices=False)
    np.testing.assert_allclose(product, (u[:, :5] * s[:5]) @ vh[:5], atol=1e-5)
    # Eckart-Young: the squared error is the energy of the dropped singular values
    assert np.linalg.norm(w - product) ** 2 == pytest.approx((s[5:] ** 2).sum(), rel=1e-4)
    x = torch.randn(3, 24)
    torch.testing.assert_close(module(x), x @ torch.from_numpy(product).float().T + linear.bias, atol=1e-5, rtol=1e-4)


def test_a_truly_low_rank_layer_is_reproduced_exactly():
    torch.manual_seed(0)
    linear = nn.Linear(32, 64)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(64, 3) @ torch.randn(3, 32))
    x = torch.randn(5, 32)
    torch.testing.assert_close(LowRankLinear.from_linear(linear, 3)(x), linear(x), atol=1e-4, rtol=1e-4)


def test_rank_for_energy_counts_squared_singular_values():
    s = torch.tensor([3.0, 2.0, 1.0, 1.0])  # energies 9, 4, 1, 1 of 15
    assert rank_for_energy(s, 9 / 15) == 1
    assert rank_for_energy(s, 0.61) == 2
    assert rank_for_energy(s, 14 / 15) == 3
    assert rank_for_energy(s, 1.0) == 4


def test_bert_factorization_saves_reloads_exactly_and_plain_loading_refuses(tmp_path):
    model = tiny_bert()
    summary = factorize(model, LowRankConfig(energy=0.7, round_to=4))
    ffn_names = {f"bert.encoder.layer.{i}.{n}" for i in range(2) for n in ("intermediate.dense", "output.dense")}
    assert set(summary["ranks"]) == ffn_names and summary["skipped"] == []
    assert all(rank % 4 == 0 and rank * (32 + 64) <= 0.9 * 32 * 64 for rank in summary["ranks"].values())
    assert all(e >= 0.7 for e in summary["energy"].values())
    assert summary["target_macs_per_token_after"] == sum(r * 96 for r in summary["ranks"].values())
    assert isinstance(model.bert.encoder.layer[0].intermediate.dense, LowRankLinear)
    batch = inputs()
    model.save_pretrained(tmp_path)
    reloaded = load_factorized(tmp_path)
    assert type(reloaded).__name__ == "BertForSequenceClassification"
    assert torch.equal(logits(reloaded, batch), logits(model, batch))
    with pytest.raises(RuntimeError, match="size mismatch"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path)


def test_layers_where_factors_cost_more_stay_dense():
    model = tiny_bert()
    # energy 1.0 needs the full rank 32, which costs 32 * 96 > 32 * 64: no layer pays
    summary = factorize(model, LowRankConfig(energy=1.0))
    assert summary["ranks"] == {} and len(summary["skipped"]) == 4
    assert not any(isinstance(m, LowRankLinear) for m in model.modules())


def test_budget_meets_the_parameter_budget_with_one_energy_threshold():
    model = tiny_llama()
    config = LowRankConfig(budget=0.5, targets=["ffn", "attention_output"], min_saving=0.0)
    linears = target_linears(model, config)
    dense = sum(l.in_features * l.out_features for l in linears.values())
    summary = factorize(model, config)
    assert summary["target_macs_per_token_before"] == dense
    assert summary["target_macs_per_token_after"] <= 0.5 * dense
    # the shared energy threshold is the highest that fits: a hair more breaks the budget
    higher = summary["energy_threshold"] + 1e-6
    cost = 0
    for linear in linears.values():
        s = np.linalg.svd(linear.weight.detach().double().numpy(), compute_uv=False)
        rank = int(np.searchsorted(np.cumsum(s ** 2) / (s ** 2).sum(), higher)) + 1
        side = linear.in_features + linear.out_features
        cost += min(rank * side, linear.in_features * linear.out_features)
    assert cost > 0.5 * dense


def test_llama_factorized_reloads_exactly(tmp_path):
    model = tiny_llama()
    factorize(model, LowRankConfig(rank=8, targets=["ffn", "attention_qkv"]))
    assert isinstance(model.model.layers[1].self_attn.k_proj, LowRankLinear)
    model.save_pretrained(tmp_path)
    batch = inputs()
    assert torch.equal(logits(load_factorized(tmp_path, "causal-lm"), batch), logits(model, batch))


def test_modules_by_glob_pattern():
    model = tiny_bert()
    summary = factorize(model, LowRankConfig(rank=4, targets=[], modules=["*.layer.1.intermediate.dense"]))
    assert list(summary["ranks"]) == ["bert.encoder.layer.1.intermediate.dense"]
    with pytest.raises(EdgeslimError, match="match no Linear"):
        factorize(tiny_bert(), LowRankConfig(rank=4, targets=[], modules=["*.nothing"]))


def test_factorized_bert_exports_to_two_matmuls_per_layer_and_matches_torch(tmp_path):
    import onnx
    import onnxruntime as ort
    from optimum.exporters.onnx import onnx_export_from_model

    model = tiny_bert()
    dense = copy.deepcopy(model)
    summary = factorize(model, LowRankConfig(rank=8))
    model.save_pretrained(tmp_path / "torch")
    reloaded = load_factorized(tmp_path / "torch")
    counts = {}
    for name, m in (("dense", dense), ("factorized", reloaded)):
        onnx_export_from_model(m, tmp_path / name, opset=18, task="text-classification", do_validation=False)
        counts[name] = [n.op_type for n in onnx.load(str(tmp_path / name / "model.onnx")).graph.node].count("MatMul")
    assert counts["factorized"] == counts["dense"] + len(summary["ranks"])
    batch = inputs()
    session = ort.InferenceSession(str(tmp_path / "factorized" / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy(),
             "token_type_ids": np.zeros_like(batch["input_ids"].numpy())}
    names = {i.name for i in session.get_inputs()}
    got = session.run(["logits"], {k: v for k, v in feeds.items() if k in names})[0]
    np.testing.assert_allclose(got, logits(model, batch).numpy(), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("values, message", [
    ({}, "give exactly one of rank"),
    ({"rank": 8, "energy": 0.9}, "not rank and energy"),
    ({"energy": 1.5}, "less than or equal to 1"),
    ({"budget": 1.0}, "less than 1"),
    ({"rank": 0}, "greater than or equal to 1"),
    ({"rank": 4, "targets": []}, "nothing to factorize"),
])
def test_bad_values_fail_validation(values, message):
    with pytest.raises(ValidationError, match=message):
        LowRankConfig(**values)


def test_rank_larger_than_the_matrix_fails_check_and_run_in_one_line():
    with pytest.raises(ValueError, match="rank 32 is not smaller than the targeted matrices") as info:
        LowRankConfig(rank=32).check_against(tiny_bert().config, "text-classification")
    assert "\n" not in str(info.value)
    with pytest.raises(EdgeslimError, match="rank 40 is not smaller than"):
        factorize(tiny_bert(), LowRankConfig(rank=40, targets=[], modules=["*.layer.0.output.dense"]))


def test_lowrank_stage_saves_a_folder_that_load_factorized_reads(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path)
    teacher = teacher_artifact(tmp_path / "teacher", tiny_bert(vocab=len(tokenizer)), tokenizer)
    ctx = stage_context(tmp_path / "out", teacher)
    artifact = run_lowrank(LowRankConfig(energy=0.7, recovery={"steps": 2, "batch_size": 8}), teacher, ctx)
    metrics = artifact.manifest["metrics"]
    assert metrics["ranks"] and metrics["recovery_steps"] == 2
    reloaded = load_factorized(artifact.path)
    assert sum(p.numel() for p in reloaded.parameters()) == metrics["params_after"] < metrics["params_before"]
