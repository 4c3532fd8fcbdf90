"""Accuracy-aware selection: the fastest candidate within budget, sensitivity-driven exclusion when
none is, and a best-effort model with the gap reported when even that fails."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from _quantize_models import export_torchscript, onnx_artifact_dir, run_onnx, sentiment_data, trained_tiny_bert
from edgeslim.artifacts import Artifact
from edgeslim.quantize.specs import make_spec
from edgeslim.quantize.config import QuantizeConfig
from edgeslim.quantize.stage import run
from edgeslim.quantize.select import Candidate, accuracy_budget, choose
from edgeslim.stage import StageContext

WORD_TABLE = "bert.embeddings.word_embeddings.weight"


@pytest.fixture(scope="module")
def outlier_model(tmp_path_factory):
    """A trained tiny BERT whose word-embedding table has one huge row for a token the data never uses.

    The float model is unaffected (the row is never looked up), but a per-tensor INT8 scale for the
    table is set by that row, so every other embedding rounds to zero: quantizing that one Gather
    destroys accuracy, which is what sensitivity analysis must find.
    """
    root = tmp_path_factory.mktemp("outlier")
    data = sentiment_data()
    model = trained_tiny_bert(root / "hf", data)
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[4] = 1000.0  # [MASK]: never in the reviews
    onnx_file = export_torchscript(model, root / "model.onnx")
    export = onnx_artifact_dir(root / "hf", onnx_file, root / "export")
    return types.SimpleNamespace(root=root, data=data, export=export)


def context(out_dir: Path, data, budget: float | None = None) -> StageContext:
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe = types.SimpleNamespace(task="text-classification", budgets=types.SimpleNamespace(accuracy_drop=budget))
    return StageContext(out_dir=out_dir, recipe=recipe, data=data, quiet=True, seed=0)


def eval_accuracy(onnx_file: Path, folder: Path, data) -> float:
    """Accuracy computed here, independently of the stage: batch-1 logits arg-max against labels."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    hits = [int(np.argmax(run_onnx(onnx_file, dict(tokenizer(ex.text, return_tensors="np")))[0])) == ex.label
            for ex in data.eval]
    return float(np.mean(hits))


def word_table_gather(onnx_file: Path) -> str:
    graph = onnx.load(str(onnx_file)).graph
    return next(n.name for n in graph.node if n.op_type == "Gather" and n.input[0] == WORD_TABLE)


def test_budget_forces_exclusion_of_the_most_sensitive_nodes(outlier_model, tmp_path):
    src = outlier_model.export
    reference = eval_accuracy(src / "model.onnx", src, outlier_model.data)
    assert reference >= 0.9  # the float model is good
    ctx = context(tmp_path / "out", outlier_model.data)
    result = run(QuantizeConfig(mode="dynamic", max_accuracy_drop=0.05), Artifact(src, "onnx", {}), ctx)
    manifest = result.manifest
    first = manifest["candidates"][0]
    assert first["name"] == "dynamic-int8" and not first["meets_budget"] and first["accuracy_drop"] > 0.05
    ranking = [row["node"] for row in manifest["sensitivity"]]
    assert ranking[0] == word_table_gather(src / "model.onnx")
    choice = manifest["choice"]
    excluded = choice["excluded_nodes"]
    assert choice["meets_budget"] and excluded == ranking[: len(excluded)] and len(excluded) >= 1
    chosen = next(c for c in manifest["candidates"] if c["name"] == choice["name"])
    assert chosen["meets_budget"] and chosen["accuracy_drop"] <= 0.05
    # What was saved is that model: the table is float, the rest is INT8, and accuracy holds.
    saved = onnx.load(str(ctx.out_dir / "model.onnx")).graph
    assert WORD_TABLE in {i.name for i in saved.initializer}
    assert sum(n.op_type == "MatMulInteger" for n in saved.node) == 12 + 2  # and the pooler and classifier Gemms
    assert reference - eval_accuracy(ctx.out_dir / "model.onnx", src, outlier_model.data) <= 0.05
    assert "most sensitive" in choice["reason"]


def test_best_effort_is_saved_with_the_gap_when_no_candidate_meets_budget(outlier_model, tmp_path):
    ctx = context(tmp_path / "out", outlier_model.data, budget=0.05)  # the recipe-level budget
    config = QuantizeConfig(candidates=[make_spec(mode="dynamic"), make_spec(mode="dynamic", per_channel=True)],
                            exclude_sensitive=False)
    result = run(config, Artifact(outlier_model.export, "onnx", {}), ctx)
    choice = result.manifest["choice"]
    rows = {c["name"]: c for c in result.manifest["candidates"]}
    assert len(rows) == 2 and not any(r["meets_budget"] for r in rows.values())
    assert not choice["meets_budget"] and choice["budget_accuracy_drop"] == 0.05
    best = min(r["accuracy_drop"] for r in rows.values())
    assert rows[choice["name"]]["accuracy_drop"] == best
    assert choice["gap"] == pytest.approx(best - 0.05)
    assert "over budget" in choice["reason"]
    assert run_onnx(ctx.out_dir / "model.onnx", {"input_ids": np.array([[2, 10, 3]]), "attention_mask": np.ones((1, 3), np.int64),
                                                 "token_type_ids": np.zeros((1, 3), np.int64)}).shape == (1, 2)


def test_every_candidate_is_recorded_and_the_fastest_within_budget_kept(outlier_model, tmp_path):
    ctx = context(tmp_path / "out", outlier_model.data)
    config = QuantizeConfig(
        candidates=[make_spec(mode="dynamic", quantize_embeddings=False),
                    make_spec(mode="static", quantize_embeddings=False, calibration_samples=8),
                    make_spec(mode="weight_only", algorithm="rtn", block_size=32)],
        max_accuracy_drop=0.05, latency_runs=5,
    )
    result = run(config, Artifact(outlier_model.export, "onnx", {}), ctx)
    rows = result.manifest["candidates"]
    assert [r["name"] for r in rows] == ["dynamic-int8-noemb", "static-qdq-minmax-noemb", "weight_only-rtn-int4-b32"]
    for row in rows:
        assert row["error"] is None and row["size_bytes"] > 0 and row["latency_ms_p50"] > 0
        assert 0.0 <= row["accuracy"] <= 1.0
    within = [r for r in rows if r["meets_budget"]]
    assert within
    fastest = min(within, key=lambda r: r["latency_ms_p50"])
    chosen = next(r for r in within if r["name"] == result.manifest["choice"]["name"])
    # the fastest, or a candidate whose latency ties with it within noise and is no larger
    assert chosen is fastest or ("tie" in result.manifest["choice"]["reason"] and chosen["size_bytes"] <= fastest["size_bytes"])
    assert result.manifest["metrics"]["size_bytes"] == (ctx.out_dir / "model.onnx").stat().st_size


def candidate(name: str, drop: float, latency: float, size: int = 100) -> Candidate:
    return Candidate(name, make_spec(), Path(f"{name}.onnx"), accuracy=0.9 - drop, drop=drop, latency_ms=latency,
                     size_bytes=size)


def test_choose_fastest_within_budget_and_smallest_on_a_tie():
    built = [candidate("slow-good", 0.0, 5.0), candidate("fast-bad", 0.2, 1.0), candidate("mid", 0.01, 3.0, 90),
             candidate("mid-big", 0.01, 3.0, 120)]
    chosen, reason = choose(built, budget=0.02, baseline=0.9)
    assert chosen.name == "mid" and "within the accuracy budget" in reason
    chosen, _ = choose(built, budget=None, baseline=0.9)
    assert chosen.name == "fast-bad"
    chosen, reason = choose(built, budget=0.0, baseline=0.9)
    assert chosen.name == "slow-good"
    chosen, reason = choose(built[1:], budget=0.001, baseline=0.9)
    assert chosen.name == "mid" and "0.0090 over budget" in reason


def test_stage_budget_overrides_the_recipe_budget():
    recipe = types.SimpleNamespace(budgets=types.SimpleNamespace(accuracy_drop=0.03))
    assert accuracy_budget(QuantizeConfig(), recipe) == 0.03
    assert accuracy_budget(QuantizeConfig(max_accuracy_drop=0.01), recipe) == 0.01
    assert accuracy_budget(QuantizeConfig(), types.SimpleNamespace(budgets=types.SimpleNamespace(accuracy_drop=None))) is None


def test_drops_count_from_the_teacher_only_for_the_recipe_budget():
    from edgeslim.quantize.select import drop_reference

    assert drop_reference(QuantizeConfig(), 0.80, 0.85, whole_split=True) == (0.85, "teacher")
    assert drop_reference(QuantizeConfig(max_accuracy_drop=0.01), 0.80, 0.85, whole_split=True) == (0.80, "input")
    assert drop_reference(QuantizeConfig(), 0.80, None, whole_split=True) == (0.80, "input")
    assert drop_reference(QuantizeConfig(eval_limit=10), 0.80, 0.85, whole_split=False) == (0.80, "input")
