"""Roofline prediction: FLOPs and bytes per executed node, compute- and memory-bound limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeslim.targets import predict
from edgeslim.targets.profile import load_profile, profile_from_dict
from edgeslim.targets.runners import measure
from _target_models import token_inputs, token_model, token_model_flops

S, H, N = 16, 64, 48


def matmul_model(path: Path) -> Path:
    """One MatMul: x [1, S, H] @ W [H, N]."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((H, N)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, S, H])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, S, N])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def device(gflops=10.0, gbps=1e9, threads=1, cores=4, efficiency=1.0, overhead=0.0, int8=1.0):
    return profile_from_dict({
        "name": "model-device", "target": {"arch": "aarch64", "cpu": "test", "cores": cores, "memory_mb": 1024},
        "runtime": {"threads": threads, "graph_optimization_level": "disable"}, "access": {"kind": "none"},
        "predict": {"gflops_per_thread": gflops, "memory_gbps": gbps, "thread_efficiency": efficiency,
                    "op_overhead_us": overhead, "int8_speedup": int8}}, "test")


X = [{"x": np.ones((1, S, H), dtype=np.float32)}]


def test_flops_formulas():
    assert predict.node_flops("MatMul", [[1, S, H], [H, N]], [[1, S, N]]) == 2 * S * H * N
    assert predict.node_flops("Gemm", [[S, H], [H, N]], [[S, N]]) == 2 * S * H * N
    # Conv: 8 output channels of 3x3 over 4 input channels on a 10x10 output
    assert predict.node_flops("Conv", [[1, 4, 12, 12], [8, 4, 3, 3]], [[1, 8, 10, 10]]) == 2 * 8 * 100 * 4 * 9
    assert predict.node_flops("Relu", [[1, S, N]], [[1, S, N]]) == S * N


def test_compute_bound_time_is_flops_over_rate(tmp_path):
    model = matmul_model(tmp_path / "mm.onnx")
    ms = predict.predict_latency_ms(device(gflops=10.0), model, X)
    assert ms == pytest.approx(1000 * 2 * S * H * N / 10e9)
    # two threads at full efficiency halve it; at 50% efficiency they give 1.5x
    assert predict.predict_latency_ms(device(threads=2), model, X) == pytest.approx(ms / 2)
    assert predict.predict_latency_ms(device(threads=2, efficiency=0.5), model, X) == pytest.approx(ms / 1.5)


def test_memory_bound_time_is_bytes_over_bandwidth(tmp_path):
    model = matmul_model(tmp_path / "mm.onnx")
    ms = predict.predict_latency_ms(device(gflops=1e6, gbps=1.0, overhead=3.0), model, X)
    moved = 4 * (S * H + H * N + S * N)  # input, weight and output in float32
    assert ms == pytest.approx(1000 * moved / 1e9 + 0.003)


def test_integer_matmuls_use_the_int8_rate(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = matmul_model(tmp_path / "mm.onnx")
    int8 = tmp_path / "mm-int8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    nodes, _, _ = predict.profile_nodes(int8, X, level="all")
    assert any(n.op in predict.INTEGER_MATMULS for n in nodes)
    slow = predict.predict_latency_ms(device(int8=1.0), int8, X)
    fast = predict.predict_latency_ms(device(int8=4.0), int8, X)
    assert fast < slow / 2


def test_executed_matmul_flops_match_the_closed_form(tmp_path):
    hidden, layers = 48, 3
    model = token_model(tmp_path / "t.onnx", hidden=hidden, layers=layers)
    example = token_inputs(1, seq=20)
    nodes, runs, _ = predict.profile_nodes(model, example, level="disable")
    assert runs == 1
    matmul = sum(n.flops for n in nodes if n.op == "MatMul")
    assert matmul == token_model_flops(hidden, layers, seq=20)


def test_access_none_gives_predicted_cells(tmp_path):
    model = token_model(tmp_path / "t.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"nope")
    cells = measure(load_profile("raspberry-pi-5"), {"t": model, "broken": broken}, token_inputs(2), warmup=1, runs=3)
    cell = cells["t"]
    assert cell["status"] == "predicted" and "not a measurement" in cell["reason"]
    lat = cell["latency_ms"]
    assert lat["n"] == 0 and lat["p50"] == lat["p90"] == lat["mean"] > 0
    assert cell["throughput"] == pytest.approx(1000 / lat["mean"])
    assert cells["broken"]["status"] == "error" and "prediction failed" in cells["broken"]["reason"]


def test_profile_without_figures_is_skipped(tmp_path):
    local = load_profile("x86-64-cpu").model_copy(update={"predict": None})
    cells = predict.predict_cells(local, {"t": token_model(tmp_path / "t.onnx")}, token_inputs(1))
    assert cells["t"]["status"] == "skipped" and "predict" in cells["t"]["reason"]


def test_predictions_say_which_providers_graph_they_were_costed_on(tmp_path):
    """A CPU device is costed on the CPU provider's graph with nothing to add; a GPU device whose
    provider this host's onnxruntime cannot activate is costed on the CPU graph and says so."""
    import onnxruntime

    model = token_model(tmp_path / "t.onnx")
    cpu_cell = predict.predict_cells(load_profile("raspberry-pi-5"), {"t": model}, token_inputs(1))["t"]
    assert cpu_cell["prediction"]["costed_on"] == ["CPUExecutionProvider"]
    assert "graph_note" not in cpu_cell["prediction"]
    gpu = load_profile("nvidia-gpu")
    gpu = gpu.model_copy(update={"access": gpu.access.model_copy(update={"kind": "none"})})
    _, _, active = predict.profile_nodes(model, token_inputs(1), providers=predict.costing_providers(gpu))
    gpu_cell = predict.predict_cells(gpu, {"t": model}, token_inputs(1))["t"]
    assert gpu_cell["prediction"]["costed_on"] == active
    if active[0] == "CUDAExecutionProvider":
        assert "graph_note" not in gpu_cell["prediction"]
    else:
        assert active == ["CPUExecutionProvider"]
        assert "CUDAExecutionProvider is not usable" in gpu_cell["prediction"]["graph_note"]


def test_predictions_carry_their_band_and_a_budget_judges_its_upper_end(tmp_path):
    """An uncalibrated profile's prediction is labelled as such with the wide band measured for such
    profiles; a calibrated one carries its fit's error; an allowed-predicted budget passes only when
    the band's upper end is under the limit."""
    from edgeslim.report.gate import _latency_check

    model = token_model(tmp_path / "t.onnx")
    profile = load_profile("raspberry-pi-5")
    cell = predict.predict_cells(profile, {"t": model}, token_inputs(2))["t"]
    p50 = cell["latency_ms"]["p50"]
    assert cell["prediction"]["calibrated"] is False and "uncalibrated" in cell["reason"]
    low, high = cell["latency_interval_ms"]["p50"]
    assert low == pytest.approx(p50 * predict.UNCALIBRATED_BAND[0]) and high == pytest.approx(p50 * predict.UNCALIBRATED_BAND[1])
    assert not _latency_check({"devices": {"d": cell}}, "d", "p50", p50 * 2, True).passed
    calibrated = profile.model_copy(update={"predict": profile.predict.model_copy(
        update={"calibration": {"date": "2026-11-30", "max_error": 0.2}})})
    cell = predict.predict_cells(calibrated, {"t": model}, token_inputs(2))["t"]
    assert cell["prediction"]["calibrated"] and cell["latency_interval_ms"]["p50"][1] == pytest.approx(p50 * 1.2)
    assert _latency_check({"devices": {"d": cell}}, "d", "p50", p50 * 2, True).passed


def test_devices_calibrate_writes_a_profile_with_fitted_figures_and_provenance(tmp_path):
    from conftest import run_cli

    out = tmp_path / "calibrated.yaml"
    result = run_cli("devices", "calibrate", "x86-64-cpu", "--out", out, "--runs", "5", "--quiet")
    assert result.returncode == 0, result.stderr[-2000:]
    profile = load_profile(out)
    calibration = profile.predict.calibration
    assert calibration["onnxruntime"] and calibration["isa"] is not None and calibration["threads"] == 1
    assert 0 <= calibration["cv_median_error"] <= calibration["max_error"] and len(calibration["models"]) >= 15
    assert profile.predict.call_overhead_us > 0 and profile.predict.gflops_per_thread > 0
    cell = predict.predict_cells(profile.model_copy(update={"access": profile.access.model_copy(update={"kind": "none"})}),
                                 {"t": token_model(tmp_path / "t.onnx")}, token_inputs(2))["t"]
    assert cell["status"] == "predicted" and cell["prediction"]["calibration"]["date"] == calibration["date"]
    refused = run_cli("devices", "calibrate", "raspberry-pi-4", "--out", tmp_path / "pi.yaml")
    assert refused.returncode == 2 and "has no runner to measure on" in refused.stderr
    assert not (tmp_path / "pi.yaml").exists()


def test_whole_reference_models_weigh_as_much_as_all_the_kernels_in_the_fit():
    """Calibration fits whole models as much as kernels: they are what a profile predicts."""
    from edgeslim.targets.calibrate import REFERENCE_ENCODERS, WHOLE_MODEL_PREFIX, weights

    names = [f"{WHOLE_MODEL_PREFIX}h128-l2-fp32", f"{WHOLE_MODEL_PREFIX}h128-l2-int8", "enc-h128-fp32",
             "enc-h128-int8", "attention-s64", "empty"]
    assert weights(names) == [2.0, 2.0, 1.0, 1.0, 1.0, 1.0]
    assert weights(["enc-h128-fp32", "empty"]) == [1.0, 1.0]
    assert len(REFERENCE_ENCODERS) >= 3
