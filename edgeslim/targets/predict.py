"""Latency prediction for devices with no runner: a per-operator roofline.

The operators and their concrete shapes come from onnxruntime itself: the model is run once per
input here with profiling on, at the profile's graph-optimization level and with the profile's
execution providers where this host's onnxruntime has them (a CUDA device is costed on the graph
the CUDA provider runs, copies and CPU fallbacks included, when this host has onnxruntime-gpu and a
GPU; otherwise on the CPU provider's graph, and the cell says so), so the prediction covers the
fused graph onnxruntime actually executes, not the exported one. For every executed node,

    time = max(FLOPs / compute rate, bytes moved / memory bandwidth) + dispatch overhead

where the compute rate is the profile's ``gflops_per_thread`` scaled by its threads and thread
efficiency (and by ``int8_speedup`` for integer matmuls), and the bytes are the node's inputs,
weights and outputs as onnxruntime reports them. The sum is the predicted latency of one inference.
The result is a cell with status ``predicted``: an estimate, never counted as a measurement.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeslim.errors import EdgeslimError, describe
from edgeslim.targets.profile import DeviceProfile, Predict
from edgeslim.targets.runners.job import cell

#: Operators whose heavy work is an integer (INT8 / INT4) matrix product.
INTEGER_MATMULS = {"MatMulInteger", "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm",
                   "QAttention", "ConvInteger", "QLinearConv", "DynamicQuantizeLSTM"}
#: Weight-only low-bit matmuls: their speed relative to fp32 is ``nbits_speedup``, not ``int8_speedup``.
NBITS_MATMULS = {"MatMulNBits", "MatMulBnb4", "MatMulFpQ4"}
_MATMULS = {"MatMul", "FusedMatMul", "MatMulInteger", "QLinearMatMul", "DynamicQuantizeMatMul",
            "MatMulIntegerToFloat", "MatMulNBits", "MatMulBnb4", "MatMulFpQ4"}
_GEMMS = {"Gemm", "FusedGemm", "QGemm"}
_CONVS = {"Conv", "FusedConv", "ConvInteger", "QLinearConv", "NhwcFusedConv"}


@dataclass(frozen=True)
class NodeCost:
    """What one executed node costs: its operator, floating/integer operations and bytes moved."""

    op: str
    flops: float
    bytes: float


def _shapes(entries: list[dict]) -> list[list[int]]:
    return [list(next(iter(entry.values()))) if entry else [] for entry in entries]


def _prod(dims: list[int]) -> int:
    return int(math.prod(dims)) if dims else 1


def node_flops(op: str, inputs: list[list[int]], outputs: list[list[int]]) -> float:
    """Multiply-adds x 2 for matrix products, convolutions and attention; one op per output element else."""
    out = outputs[0] if outputs else []
    if op in _MATMULS and inputs and inputs[0]:
        return 2.0 * _prod(out) * inputs[0][-1]
    if op in _GEMMS and len(inputs) >= 2 and len(inputs[0]) == 2:
        return 2.0 * _prod(out) * inputs[0][0 if _prod(out) and out[0] != inputs[0][0] else 1]
    if op in _CONVS and len(inputs) >= 2 and len(inputs[1]) >= 2:
        return 2.0 * _prod(out) * _prod(inputs[1][1:])
    if op in ("Attention", "QAttention") and len(inputs) >= 2 and len(inputs[0]) == 3:
        batch, seq, hidden_in = inputs[0]
        proj = inputs[1][-1]  # 3 x hidden
        hidden = proj // 3
        return 2.0 * batch * seq * hidden_in * proj + 4.0 * batch * seq * seq * hidden
    if op == "MultiHeadAttention" and len(inputs) >= 2 and len(inputs[0]) == 3:
        batch, seq, hidden = inputs[0]
        kv_seq = inputs[1][1] if len(inputs[1]) == 3 else seq
        return 4.0 * batch * seq * kv_seq * hidden
    return float(sum(_prod(o) for o in outputs))


def _weight_bytes(graph) -> dict[str, float]:
    """Bytes of the initializers each named node of ``graph`` reads (its weights)."""
    import onnx

    sizes = {}
    for init in graph.initializer:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        sizes[init.name] = float(math.prod(init.dims) * itemsize)
    return {node.name: sum(sizes.get(name, 0.0) for name in node.input) for node in graph.node if node.name}


def _profiling_spec(level: str, tmp: str, providers: list[str] | None) -> dict:
    return {"threads": 1, "graph_optimization_level": level, "profile_prefix": os.path.join(tmp, "profile"),
            "optimized_model": os.path.join(tmp, "optimized.onnx"), "providers": providers}


def costing_providers(profile: DeviceProfile) -> list[str]:
    """The profile's execution providers that this host's onnxruntime has, in the profile's order
    (the CPU provider alone when it has none of them): the graph a prediction is costed on."""
    import onnxruntime

    available = set(onnxruntime.get_available_providers())
    return [p for p in profile.runtime.execution_providers if p in available] or ["CPUExecutionProvider"]


def profile_nodes(model: Path, inputs: list[dict[str, np.ndarray]], level: str = "all",
                  max_inputs: int = 8, providers: list[str] | None = None) -> tuple[list[NodeCost], int, list[str]]:
    """Run ``model`` on up to ``max_inputs`` inputs with profiling; the executed nodes' costs, the run
    count, and the providers the session really activated (onnxruntime falls back to the CPU silently,
    e.g. when onnxruntime-gpu finds no GPU).

    onnxruntime's profile gives each node's concrete input and output shapes and activation bytes,
    but not the weights a kernel pre-packed at load time; those come from the optimized graph
    onnxruntime saves, matched by node name (unnamed nodes are named first so every node matches).
    A gather reads only the rows it outputs, so its table does not count as bytes moved.
    """
    import onnx
    from edgeslim.targets.harness import make_session

    with tempfile.TemporaryDirectory(prefix="edgeslim-predict-") as tmp:
        proto = onnx.load(str(model))
        for index, node in enumerate(proto.graph.node):
            node.name = node.name or f"{node.op_type}_{index}"
        named = os.path.join(tmp, "named.onnx")
        onnx.save(proto, named)
        del proto
        session = make_session(named, _profiling_spec(level, tmp, providers))
        active = session.get_providers()
        wanted = [i.name for i in session.get_inputs()]
        used = inputs[:max_inputs]
        for example in used:
            session.run(None, {name: example[name] for name in wanted})
        events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
        weights = _weight_bytes(onnx.load(os.path.join(tmp, "optimized.onnx"), load_external_data=False).graph)
    costs = []
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        args = event["args"]
        op = args["op_name"]
        flops = node_flops(op, _shapes(args.get("input_type_shape", [])), _shapes(args.get("output_type_shape", [])))
        if op.startswith("Gather"):  # reads only the rows it outputs (counted as output), not the table
            params = 0.0
        else:
            params = max(float(args.get("parameter_size", 0)), weights.get(event["name"].removesuffix("_kernel_time"), 0.0))
        moved = float(args.get("activation_size", 0)) + params + float(args.get("output_size", 0))
        costs.append(NodeCost(op, flops, moved))
    return costs, len(used), active


def node_seconds(node: NodeCost, figures: Predict, threads: int) -> float:
    """Roofline time of one node on a device with these figures and threads."""
    scale = 1.0 + (threads - 1) * figures.thread_efficiency
    rate = figures.gflops_per_thread * 1e9 * scale
    overhead = figures.op_overhead_us
    if node.op in INTEGER_MATMULS:
        rate *= figures.int8_speedup
        overhead += figures.quantized_op_overhead_us
    elif node.op in NBITS_MATMULS:
        rate *= figures.nbits_speedup
        overhead += figures.quantized_op_overhead_us
    return max(node.flops / rate, node.bytes / (figures.memory_gbps * 1e9)) + overhead * 1e-6


def predict_run(profile: DeviceProfile, model: Path, inputs: list[dict[str, np.ndarray]],
                threads: int | None = None) -> tuple[float, list[str]]:
    """Predicted milliseconds per inference of ``model`` on ``profile`` (mean over the inputs), and
    the providers whose graph it was costed on."""
    if profile.predict is None:
        raise EdgeslimError(f"device '{profile.name}' has no 'predict' section; add one to predict its latency")
    costs, runs, active = profile_nodes(Path(model), inputs, profile.runtime.graph_optimization_level,
                                        providers=costing_providers(profile))
    threads = threads or profile.runtime.threads
    per_run = sum(node_seconds(node, profile.predict, threads) for node in costs) / max(runs, 1)
    return 1000.0 * per_run + profile.predict.call_overhead_us / 1000.0, active


def predict_latency_ms(profile: DeviceProfile, model: Path, inputs: list[dict[str, np.ndarray]],
                       threads: int | None = None) -> float:
    """Predicted milliseconds per inference of ``model`` on ``profile`` (mean over the inputs)."""
    return predict_run(profile, model, inputs, threads)[0]


def graph_note(profile: DeviceProfile, active: list[str]) -> str | None:
    """What a prediction's graph lacks, or None when it is the graph the device's provider runs."""
    wanted = profile.runtime.execution_providers[0]
    if active and active[0] == wanted:
        return None
    return (f"costed on the {active[0] if active else 'CPUExecutionProvider'} graph: {wanted} is not usable in "
            "this host's onnxruntime, so its own fusions and CPU fallbacks are not seen")


#: Where the true latency lies relative to an uncalibrated prediction (measured / predicted): on the
#: hosts measured so far uncalibrated predictions were 57-81% under the measurement (2.3x-5.3x; AVX2
#: AMD EPYC, bench/predict_accuracy.py), and a profile's constants may as well be too slow.
UNCALIBRATED_BAND = (0.5, 5.5)


def prediction_band(profile: DeviceProfile) -> tuple[tuple[float, float], dict]:
    """The factor range around a prediction, and what the cell says about it."""
    calibration = (profile.predict.calibration if profile.predict else None) or {}
    error = calibration.get("max_error")
    if isinstance(error, (int, float)) and error >= 0:
        # an error of 1 or more can only be an over-prediction (a prediction is never below zero)
        band = (1.0 - error if error < 1 else 1.0 / (1.0 + error), 1.0 + error)
        return band, {"calibrated": True, "band": list(band), "calibration": calibration}
    return UNCALIBRATED_BAND, {"calibrated": False, "band": list(UNCALIBRATED_BAND),
                               "basis": "uncalibrated profile: constants from public specifications; "
                                        "measured latency was 2.3x-5.3x such predictions on an x86 host"}


def predict_cells(profile: DeviceProfile, models: dict[str, Path], inputs: list[dict[str, np.ndarray]]) -> dict[str, dict]:
    """One ``predicted`` cell per model (``skipped`` when the profile has no prediction figures)."""
    if profile.predict is None:
        return {name: cell("skipped", reason=f"device '{profile.name}' has no runner and no 'predict' figures")
                for name in models}
    cells = {}
    for name, path in models.items():
        try:
            ms, active = predict_run(profile, Path(path), inputs)
        except Exception as exc:  # noqa: BLE001 - a model ORT cannot load is that cell's error
            cells[name] = cell("error", reason=f"prediction failed: {describe(exc)}")
            continue
        stats = {"p50": ms, "p90": ms, "p99": ms, "mean": ms, "n": 0}
        (low, high), about = prediction_band(profile)
        label = "calibrated" if about["calibrated"] else "uncalibrated"
        note = graph_note(profile, active)
        about = {**about, "costed_on": active, **({"graph_note": note} if note else {})}
        cells[name] = cell("predicted", latency_ms=stats, throughput=1000.0 / ms, prediction=about,
                           latency_interval_ms={q: [ms * low, ms * high] for q in ("p50", "p90", "p99")},
                           reason=f"roofline estimate from per-operator FLOPs and bytes ({label}: x{low:g}-x{high:g}); "
                                  "not a measurement")
    return cells
