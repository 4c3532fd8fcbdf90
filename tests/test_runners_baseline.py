"""Baseline comparison: both models measured interleaved; fail only above threshold and noise."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeslim.errors import EdgeslimError
from edgeslim.targets.baseline import compare_to_baseline, latency_regression, resolve_baseline
from edgeslim.targets.profile import load_profile
from _target_models import token_inputs, token_model


def test_clear_regression_fails_and_small_one_passes():
    base = [1.0] * 100
    slow = latency_regression([1.3] * 100, base)
    assert slow["ratio"] == pytest.approx(1.3) and slow["noise"] == 0.0 and slow["failed"]
    small = latency_regression([1.02] * 100, base)
    assert small["regression"] == pytest.approx(0.02) and not small["failed"]  # under the 5% threshold


def test_regression_within_the_noise_passes():
    base = [1.0] * 200
    # blocks alternate between 0.7x and 1.5x (a machine whose load comes and goes unevenly):
    # an 8% median slowdown cannot be told from that noise
    swings = np.repeat([0.7, 1.5] * 5, 20)
    noisy = latency_regression(list(1.08 * swings / np.median(swings)), base)
    assert noisy["regression"] == pytest.approx(0.08)
    # block ratios deviate by 0.4 / 1.1 * 1.08 from their median
    assert noisy["noise"] == pytest.approx(3 * 1.4826 * (0.4 / 1.1 * 1.08) / np.sqrt(10))
    assert not noisy["failed"]


def test_too_few_runs_is_bad_input():
    with pytest.raises(EdgeslimError, match="at least 20 runs"):
        latency_regression([1.0] * 5, [1.0] * 5)


def test_resolve_baseline_from_file_folder_and_report(tmp_path):
    model = token_model(tmp_path / "model.onnx")
    assert resolve_baseline(model) == model
    assert resolve_baseline(tmp_path) == model
    report = {"release": "rel", "artifacts": [{"name": "rel", "path": str(tmp_path)}]}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.json").write_text(json.dumps(report))
    assert resolve_baseline(tmp_path / "old" / "report.json") == model
    assert resolve_baseline(tmp_path / "old") == model
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(EdgeslimError, match="not an edgeslim report.json"):
        resolve_baseline(tmp_path / "bad.json")
    with pytest.raises(EdgeslimError, match="not an ONNX file"):
        resolve_baseline(tmp_path / "missing.onnx")


def test_deliberately_slower_model_is_caught_and_same_model_passes(tmp_path):
    cpu = load_profile("x86-64-cpu")
    fast = token_model(tmp_path / "fast.onnx", hidden=256, layers=2)
    slow = token_model(tmp_path / "slow.onnx", hidden=256, layers=10)  # 5x the matmul work
    inputs = token_inputs(4, seq=32)
    caught = compare_to_baseline(cpu, slow, fast, inputs, warmup=5, runs=100)
    assert len(caught) == 1 and not caught[0].passed and caught[0].actual > 0.5, caught[0].detail
    same = compare_to_baseline(cpu, fast, fast, inputs, warmup=5, runs=100)
    assert same[0].passed, same[0].detail
    on_cpu_time = compare_to_baseline(cpu, slow, fast, inputs, warmup=5, runs=100, clock="cpu")
    assert not on_cpu_time[0].passed and on_cpu_time[0].detail.startswith("cpu p50")
    with pytest.raises(EdgeslimError, match="clock must be"):
        compare_to_baseline(cpu, slow, fast, inputs, clock="gpu")


def test_bench_writes_report_cells_and_instruction_counts(tmp_path):
    """``edgeslim bench --json`` writes cells in report.json's format (with their latency intervals);
    ``--instructions`` adds the callgrind count, and ``--baseline-instructions`` gates on it."""
    import shutil

    from conftest import run_cli

    model = token_model(tmp_path / "m.onnx")
    out = tmp_path / "cells.json"
    counting = shutil.which("valgrind") is not None
    extra = ["--instructions"] if counting else []
    result = run_cli("bench", model, "--runs", "20", "--warmup", "2", "--json", out, *extra)
    assert result.returncode == 0, result.stderr
    cell = json.loads(out.read_text())["cells"]["m"]["x86-64-cpu"]
    assert cell["status"] == "measured" and cell["latency_ms"]["n"] == 20
    low, high = cell["latency_interval_ms"]["p50"]
    assert low <= cell["latency_ms"]["p50"] <= high and "samples_ms" not in cell
    if counting:
        assert isinstance(cell["instructions"], int) and cell["instructions"] > 0
        same = run_cli("bench", model, "--runs", "20", "--baseline", model, "--baseline-instructions")
        assert same.returncode == 0, same.stdout + same.stderr
        assert "baseline.instructions" in same.stdout
