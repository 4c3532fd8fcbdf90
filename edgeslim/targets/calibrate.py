"""Calibrate a device profile's latency prediction by measuring a fixed suite on the device.

``edgeslim devices calibrate DEVICE --out my-device.yaml`` runs the suite below on any device a
runner reaches (local, ssh, cuda), costs the same models on the graph the device's runtime executes
(its optimization level: :func:`edgeslim.targets.predict.profile_nodes`), fits the prediction figures
(``gflops_per_thread``, ``int8_speedup``, ``memory_gbps``, ``op_overhead_us``, ``call_overhead_us``) to
the measurements by
least squares on log latency, and writes a copy of the profile with the fitted figures and their
provenance: date, host CPU and ISA, onnxruntime version, threads, and the fit's leave-one-out error
(``max_error``, which the report then uses as the prediction's band).

The suite: the matrix products transformer encoders and decoders run (sequence x hidden times hidden
x 4 hidden and back, at several widths; a single-token decoder step), attention scores, layer norm,
an embedding gather, an elementwise chain (memory bound), a hundred tiny operators (the cost of
dispatching one) and an empty graph (the cost of one call), each
in fp32 and, for the products, dynamic INT8 (and INT4 weight-only for the wider ones); and one
reference transformer (a BERT encoder, hidden 256, 4 layers, fp32 and INT8) for the fused operators
whole models run. ``bench/calibration_check.py`` then predicts transformers of other sizes, unseen.
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from edgeslim.errors import EdgeslimError
from edgeslim.targets.predict import INTEGER_MATMULS, NBITS_MATMULS, costing_providers, profile_nodes
from edgeslim.targets.profile import DeviceProfile

#: (hidden width, layers) of the whole reference encoders in the suite (fp32 and dynamic INT8 each):
#: whole models cost more than the sum of their kernels measured alone (cache misses between
#: operators, fused attention and quantization kernels at small shapes), and the fit must see that.
REFERENCE_ENCODERS = ((128, 2), (256, 4), (512, 2), (768, 2))
WHOLE_MODEL_PREFIX = "bert-"

#: (name, sequence length, hidden width) of the matrix-product blocks in the suite.
BLOCKS = [("enc-h128", 32, 128), ("enc-h256", 32, 256), ("enc-h512", 64, 512), ("enc-h768", 32, 768),
          ("step-h576", 1, 576)]


def _save(graph, path: Path) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def ffn_block(path: Path, seq: int, hidden: int, seed: int = 0) -> Path:
    """x [seq, hidden] -> MatMul [hidden, 4h] -> Gelu-like (Relu) -> MatMul [4h, hidden] -> Add x."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array((rng.standard_normal((hidden, 4 * hidden)) / math.sqrt(hidden)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((4 * hidden, hidden)) / math.sqrt(4 * hidden)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("MatMul", ["b", "w2"], ["c"]), helper.make_node("Add", ["c", "x"], ["y"])]
    spec = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, hidden])]
    return _save(helper.make_graph(nodes, "ffn", spec, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [seq, hidden])],
                                   [w1, w2]), path)


def attention_scores(path: Path, seq: int, hidden: int) -> Path:
    """softmax(q k^T) v for one head of width ``hidden``: batched activations times activations."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[1, 0]), helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("Softmax", ["s"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["y"])]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [seq, hidden]) for n in ("q", "k", "v")]
    return _save(helper.make_graph(nodes, "attention", inputs,
                                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [seq, hidden])]), path)


def norm_and_gather(path: Path, seq: int, hidden: int, vocab: int = 30000) -> Path:
    """An embedding gather of ``seq`` rows from a ``vocab`` x ``hidden`` table, then layer norm."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((vocab, hidden)).astype(np.float32), "table"),
             numpy_helper.from_array(np.ones(hidden, np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(hidden, np.float32), "beta")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]),
             helper.make_node("LayerNormalization", ["e", "gamma", "beta"], ["y"], axis=-1)]
    return _save(helper.make_graph(nodes, "embed", [helper.make_tensor_value_info("ids", TensorProto.INT64, [seq])],
                                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [seq, hidden])], inits), path)


def elementwise(path: Path, size: int = 1 << 20) -> Path:
    """Eight elementwise operators over ``size`` floats: memory bound."""
    from onnx import TensorProto, helper

    nodes, current = [], "x"
    for i in range(8):
        nodes.append(helper.make_node("Add" if i % 2 else "Mul", [current, current], [f"t{i}"]))
        current = f"t{i}"
    return _save(helper.make_graph(nodes, "eltwise", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size])],
                                   [helper.make_tensor_value_info(current, TensorProto.FLOAT, [size])]), path)


def tiny_ops(path: Path, count: int = 100) -> Path:
    """``count`` Add operators on 16 floats: nothing but the cost of dispatching each operator."""
    from onnx import TensorProto, helper

    nodes, current = [], "x"
    for i in range(count):
        nodes.append(helper.make_node("Add", [current, "x"], [f"a{i}"]))
        current = f"a{i}"
    return _save(helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                                   [helper.make_tensor_value_info(current, TensorProto.FLOAT, [1, 16])]), path)


def empty(path: Path) -> Path:
    """One Identity: what a call costs with nothing to compute."""
    from onnx import TensorProto, helper

    return _save(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "empty",
                                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])]), path)


def export_token_model(model, path: Path, output: str, seq: int = 16) -> Path:
    """Export a transformers model that takes ``input_ids`` and ``attention_mask`` as ONNX (batch and
    sequence dynamic; its first output as ``output``). It is called with keywords: what the positional
    arguments after ``input_ids`` mean differs between transformers versions."""
    import torch

    class Keywords(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)[0]

    ids = torch.randint(0, model.config.vocab_size, (1, seq))
    torch.onnx.export(Keywords(model.eval()), (ids, torch.ones_like(ids)), str(path),
                      input_names=["input_ids", "attention_mask"], output_names=[output], opset_version=17,
                      dynamo=False, dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}})
    return Path(path)


def reference_bert(path: Path, hidden: int, layers: int, seq: int = 32) -> tuple[Path, list[dict[str, np.ndarray]]]:
    """A BERT encoder of ``hidden`` x ``layers`` (random weights), exported as the export stage would
    leave it for onnxruntime (fused at load time): the operators a real transformer adds to the suite
    (fused attention, skip layer norm, bias GELU)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=1000, hidden_size=hidden, num_hidden_layers=layers,
                                 num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                                 max_position_embeddings=128))
    export_token_model(model, path, "hidden", seq)
    rng = np.random.default_rng(0)
    return Path(path), [{"input_ids": rng.integers(0, 1000, (1, seq)).astype(np.int64),
                         "attention_mask": np.ones((1, seq), dtype=np.int64)}]


def suite(folder: Path) -> dict[str, tuple[Path, list[dict[str, np.ndarray]]]]:
    """The calibration models and their inputs (name -> (onnx file, inputs))."""
    from edgeslim.quantize.ort import quantize_dynamic
    from edgeslim.quantize.specs import make_spec

    folder = Path(folder)
    rng = np.random.default_rng(0)
    models: dict[str, tuple[Path, list[dict[str, np.ndarray]]]] = {}
    for name, seq, hidden in BLOCKS:
        feeds = [{"x": rng.standard_normal((seq, hidden)).astype(np.float32)}]
        fp32 = ffn_block(folder / f"{name}-fp32.onnx", seq, hidden)
        models[f"{name}-fp32"] = (fp32, feeds)
        models[f"{name}-int8"] = (quantize_dynamic(fp32, folder / f"{name}-int8.onnx", reduce_range=False), feeds)
        if hidden >= 512:
            int4 = make_spec(mode="weight_only", bits=4, block_size=32, accuracy_level=4)
            models[f"{name}-int4"] = (int4.quantize(fp32, folder / f"{name}-int4.onnx"), feeds)
    for seq, hidden in ((64, 64), (128, 64)):
        models[f"attention-s{seq}"] = (attention_scores(folder / f"attention-s{seq}.onnx", seq, hidden),
                                       [{n: rng.standard_normal((seq, hidden)).astype(np.float32) for n in "qkv"}])
    models["embed-norm"] = (norm_and_gather(folder / "embed-norm.onnx", 64, 384),
                            [{"ids": rng.integers(0, 30000, 64).astype(np.int64)}])
    models["eltwise"] = (elementwise(folder / "eltwise.onnx"), [{"x": rng.standard_normal(1 << 20).astype(np.float32)}])
    for hidden, layers in REFERENCE_ENCODERS:
        name = f"{WHOLE_MODEL_PREFIX}h{hidden}-l{layers}"
        bert, feeds = reference_bert(folder / f"{name}.onnx", hidden, layers)
        models[f"{name}-fp32"] = (bert, feeds)
        models[f"{name}-int8"] = (quantize_dynamic(bert, folder / f"{name}-int8.onnx", reduce_range=False), feeds)
    models["tiny-ops"] = (tiny_ops(folder / "tiny-ops.onnx"), [{"x": np.ones((1, 16), np.float32)}])
    models["empty"] = (empty(folder / "empty.onnx"), [{"x": np.ones((1, 8), np.float32)}])
    return models


def node_arrays(model: Path, inputs, level: str, providers: list[str] | None = None) -> tuple:
    """FLOPs, bytes, INT8-matmul and low-bit-matmul flags of the nodes onnxruntime executes (with
    ``providers``), and the run count."""
    costs, runs, _ = profile_nodes(model, inputs, level, providers=providers)
    return (np.array([c.flops for c in costs], dtype=np.float64), np.array([c.bytes for c in costs], dtype=np.float64),
            np.array([c.op in INTEGER_MATMULS for c in costs]), np.array([c.op in NBITS_MATMULS for c in costs]), runs)


def predicted_ms(arrays, figures: dict[str, float], threads: int, efficiency: float) -> float:
    """The roofline sum of :func:`edgeslim.targets.predict.node_seconds`, vectorised over nodes."""
    flops, moved, integer, nbits, runs = arrays
    rate = figures["gflops_per_thread"] * 1e9 * (1 + (threads - 1) * efficiency)
    rate = np.where(integer, rate * figures["int8_speedup"], np.where(nbits, rate * figures["nbits_speedup"], rate))
    overhead = figures["op_overhead_us"] + np.where(integer | nbits, figures["quantized_op_overhead_us"], 0.0)
    seconds = np.maximum(flops / rate, moved / (figures["memory_gbps"] * 1e9)) + overhead * 1e-6
    return 1000.0 * float(seconds.sum()) / max(runs, 1) + figures["call_overhead_us"] / 1000.0


#: Where the fit starts, and the suite models it always keeps (alone they fix the two overheads,
#: so leaving them out of a fit says nothing about how it generalises).
START = {"gflops_per_thread": 40.0, "memory_gbps": 20.0, "op_overhead_us": 1.0, "call_overhead_us": 5.0,
         "int8_speedup": 2.0, "nbits_speedup": 1.0, "quantized_op_overhead_us": 1.0}
ANCHORS = ("tiny-ops", "empty")


def fit(rows: list[tuple[Any, float, float]], threads: int, efficiency: float,
        start: dict[str, float] | None = None) -> dict[str, float]:
    """Figures minimising the weighted squared log error over ``rows`` (node arrays, measured ms,
    weight): coordinate descent in log space from ``start`` (default :data:`START`), each figure
    scaled up or down while that helps, with shrinking steps."""
    def loss(figures):
        return sum(w * math.log(predicted_ms(a, figures, threads, efficiency) / m) ** 2 for a, m, w in rows)

    best = dict(start or START)
    score = loss(best)
    for step in (4.0, 2.0, 1.4, 1.15, 1.05):
        improved = True
        while improved:
            improved = False
            for key in best:
                for factor in (step, 1.0 / step):
                    trial = {**best, key: best[key] * factor}
                    trial_score = loss(trial)
                    if trial_score < score - 1e-12:
                        best, score, improved = trial, trial_score, True
    return {key: round(value, 4) for key, value in best.items()}


def errors(rows, figures, threads: int, efficiency: float) -> list[float]:
    return [abs(predicted_ms(a, figures, threads, efficiency) / m - 1.0) for a, m, _ in rows]


def weights(names: list[str]) -> list[float]:
    """Each row's weight in the fit: the whole reference models together count as much as all the
    kernels together, since whole models are what the profile predicts."""
    whole = sum(name.startswith(WHOLE_MODEL_PREFIX) for name in names)
    kernels = len(names) - whole
    return [kernels / whole if name.startswith(WHOLE_MODEL_PREFIX) and whole else 1.0 for name in names]


def fitted_clock(profile: DeviceProfile, cell: dict) -> dict:
    """The latency statistics a fit uses: the thread's CPU time on a one-thread CPU device (steady on
    a loaded host), wall-clock time otherwise (a GPU's work is not the host thread's CPU time)."""
    on_cpu = profile.runtime.execution_providers[0] == "CPUExecutionProvider"
    if on_cpu and profile.runtime.threads == 1 and cell.get("cpu_ms"):
        return cell["cpu_ms"]
    return cell["latency_ms"]


def calibrate(profile: DeviceProfile, work: Path, runs: int = 100,
              log=print) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Measure the suite on ``profile``'s device, fit its prediction figures; returns (the profile as
    a dict with the fitted ``predict`` section and its ``calibration``, one row per model)."""
    from edgeslim.targets.runners import measure

    if profile.access.kind not in ("local", "ssh", "cuda"):
        raise EdgeslimError(f"device '{profile.name}' has no runner to measure on (access {profile.access.kind}); "
                            "calibrate a local, ssh or cuda device")
    models = suite(work)
    level, threads = profile.runtime.graph_optimization_level, profile.runtime.threads
    providers = costing_providers(profile)
    efficiency = profile.predict.thread_efficiency if profile.predict else 0.8
    rows, table = [], []
    for name, (path, inputs) in models.items():
        log(f"calibrate: measuring {name}")
        cell = measure(profile, {name: path}, inputs, warmup=10, runs=runs, memory=False)[name]
        if cell["status"] != "measured":
            raise EdgeslimError(f"calibrate: {name} could not be measured on {profile.name}: {cell.get('reason')}")
        figure = fitted_clock(profile, cell)
        rows.append((node_arrays(path, inputs, level, providers), figure["p50"]))
        table.append({"model": name, "measured_ms": figure["p50"]})
    rows = [(arrays, ms, weight) for (arrays, ms), weight in zip(rows, weights([r["model"] for r in table]))]
    start = {key: float(getattr(profile.predict, key, value) or value) for key, value in START.items()} \
        if profile.predict else START
    figures = fit(rows, threads, efficiency, start)
    held_out = []
    for index, row in enumerate(table):  # leave one out: how far the fit is off on a model it did not see
        if row["model"] not in ANCHORS:
            others = rows[:index] + rows[index + 1:]
            held_out += errors([rows[index]], fit(others, threads, efficiency, start), threads, efficiency)
    for row, arrays_ms in zip(table, rows):
        row["predicted_ms"] = round(predicted_ms(arrays_ms[0], figures, threads, efficiency), 4)
    in_sample = errors(rows, figures, threads, efficiency)
    data = profile.model_dump(mode="json")
    data["predict"] = {**(data.get("predict") or {}), **figures, "thread_efficiency": efficiency,
                       "calibration": provenance(profile, in_sample, held_out, [r["model"] for r in table], providers)}
    return data, table


def provenance(profile: DeviceProfile, in_sample: list[float], held_out: list[float], models: list[str],
               providers: list[str]) -> dict:
    """Where the figures come from, and how good the fit is."""
    import onnxruntime

    from edgeslim.targets.harness import cpu_isa

    return {"date": _dt.date.today().isoformat(), "host_cpu": cpu_model(), "arch": platform.machine(),
            "isa": cpu_isa(), "onnxruntime": onnxruntime.__version__, "threads": profile.runtime.threads,
            "graph_optimization_level": profile.runtime.graph_optimization_level, "costed_on": providers,
            "models": models,
            "fit_median_error": round(statistics.median(in_sample), 4),
            "cv_median_error": round(statistics.median(held_out), 4), "max_error": round(max(held_out), 4),
            "note": "max_error is the largest leave-one-out error of the fit; predictions carry it as their band"}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
