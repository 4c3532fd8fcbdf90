"""How far is the roofline prediction from measured latency on this host?

    .venv/bin/python bench/predict_accuracy.py [--threads 1 2] [--runs 100] [--fit]

Exports BERT classifiers of several sizes (random weights, fp32 and dynamic INT8), measures them
with the local runner on the ``x86-64-cpu`` profile (all models interleaved, per thread count; p50
of the thread's CPU time at one thread, of wall-clock time at more) and
predicts them from the same profile's ``predict`` figures. Prints predicted vs measured p50 and the
error per model, and the median absolute error. ``--fit`` also grid-searches the figures
(gflops_per_thread, memory_gbps, op_overhead_us) that minimise the log error on these models,
to calibrate a profile from measurements (an in-sample fit: say so when quoting it).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from _targets_models import export_bert, text_inputs  # noqa: E402

from edgeslim.targets import predict  # noqa: E402
from edgeslim.targets.profile import load_profile  # noqa: E402
from edgeslim.targets.runners import measure  # noqa: E402

SIZES = [(64, 2), (128, 2), (128, 4), (256, 4), (384, 6)]


def node_arrays(nodes):
    """FLOPs, bytes and integer-matmul flags of the executed nodes, as arrays for fast what-ifs."""
    return (np.array([n.flops for n in nodes]), np.array([n.bytes for n in nodes]),
            np.array([n.op in predict.INTEGER_MATMULS for n in nodes]))


def total_ms(arrays, figures, threads: int, runs: int) -> float:
    """The same roofline sum as ``predict.node_seconds``, vectorised over nodes."""
    flops, moved, integer = arrays
    rate = figures.gflops_per_thread * 1e9 * (1 + (threads - 1) * figures.thread_efficiency)
    rate = np.where(integer, rate * figures.int8_speedup, rate)
    seconds = np.maximum(flops / rate, moved / (figures.memory_gbps * 1e9)) + figures.op_overhead_us * 1e-6
    return 1000.0 * float(seconds.sum()) / runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--fit", action="store_true")
    args = parser.parse_args()
    print("load average before: %.2f %.2f %.2f" % os.getloadavg())
    base = load_profile("x86-64-cpu")
    inputs = text_inputs(4, args.seq)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for hidden, layers in SIZES:
            for int8 in (False, True):
                name = f"bert-h{hidden}-l{layers}-{'int8' if int8 else 'fp32'}"
                models[name] = export_bert(Path(tmp) / f"{name}.onnx", hidden, layers, int8=int8)
        nodes = {}
        for name, path in models.items():
            node_list, runs, _ = predict.profile_nodes(path, inputs, base.runtime.graph_optimization_level)
            nodes[name] = (node_arrays(node_list), runs)
        for threads in args.threads:
            runtime = base.runtime.model_copy(update={"threads": threads})
            profile = base.model_copy(update={"runtime": runtime,
                                              "target": base.target.model_copy(update={"cores": max(threads, base.target.cores)})})
            cells = measure(profile, models, inputs, warmup=10, runs=args.runs, memory=False)
            for name in models:
                if cells[name]["status"] != "measured":
                    print(f"{name} t={threads}: {cells[name]['status']} {cells[name]['reason']}")
                    continue
                # one thread: the thread's CPU time (immune to preemption on a shared machine); more: wall clock
                figure = cells[name]["cpu_ms"] if threads == 1 else cells[name]["latency_ms"]
                rows.append((name, threads, figure["p50"], nodes[name]))
    def report(figures, label):
        errors = []
        print(f"\n{label}: gflops_per_thread={figures.gflops_per_thread:g} memory_gbps={figures.memory_gbps:g} "
              f"op_overhead_us={figures.op_overhead_us:g} thread_efficiency={figures.thread_efficiency:g} int8_speedup={figures.int8_speedup:g}")
        print(f"{'model':28s} {'threads':>7s} {'measured ms':>12s} {'predicted ms':>13s} {'error':>8s}")
        for name, threads, measured, (node_list, runs) in rows:
            predicted = total_ms(node_list, figures, threads, runs)
            error = (predicted - measured) / measured
            errors.append(abs(error))
            print(f"{name:28s} {threads:7d} {measured:12.3f} {predicted:13.3f} {100 * error:+7.0f}%")
        print(f"median |error| {100 * statistics.median(errors):.0f}%, max |error| {100 * max(errors):.0f}% over {len(errors)} model x thread cells")
    report(base.predict, "profile figures")
    if args.fit:
        best = None
        for gflops, gbps, overhead, eff, int8 in itertools.product(
                [10, 15, 20, 30, 40, 60, 80, 120], [5, 10, 15, 20, 30, 50], [0.5, 1, 2, 4, 8], [0.5, 0.7, 0.85, 1.0], [1.0, 1.5, 2, 3, 4]):
            figures = base.predict.model_copy(update={"gflops_per_thread": gflops, "memory_gbps": gbps,
                                                      "op_overhead_us": overhead, "thread_efficiency": eff, "int8_speedup": int8})
            loss = sum(math.log(total_ms(n, figures, t, r) / m) ** 2 for _, t, m, (n, r) in rows)
            if best is None or loss < best[0]:
                best = (loss, figures)
        report(best[1], "fitted figures (in-sample)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
