"""Does the latency verdict tell the truth? An A/A and an A/B test of ``gate --baseline``'s rule.

    .venv/bin/python bench/gate_noise.py [--tries 20] [--runs 200] [--slower 0.15] [--layers 20]

A/A: a model compared with a byte-identical copy of itself, ``--tries`` times, each in a fresh
measuring process (``edgeslim.targets.baseline.compare_to_baseline`` on the ``x86-64-cpu`` profile,
5% threshold): every failure is a false alarm. A/B: the same model against one with ``--slower``
more work (extra MatMul layers), ``--tries`` times: every pass is a missed regression. Printed: both
rates, and the median measured regression with its 95% interval per test. The models are chains
of 512x512 MatMuls, so the difference is compute, not per-call overhead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeslim.targets.baseline import compare_to_baseline  # noqa: E402
from edgeslim.targets.profile import load_profile  # noqa: E402

WIDTH = 512


def matmul_chain(path: Path, layers: int) -> Path:
    """An ONNX model of ``layers`` 512x512 MatMuls (random weights) with a Relu between them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, current = [], [], "x"
    for i in range(layers):
        weight = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"]))
        current = f"r{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, WIDTH])],
                              [helper.make_tensor_value_info(current, TensorProto.FLOAT, [8, WIDTH])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # what every onnxruntime of the pinned range loads
    onnx.save(model, str(path))
    return path


def trial(profile, current: Path, baseline: Path, inputs, runs: int) -> tuple[bool, float, float, float]:
    """One comparison: (failed, regression, interval low, interval high)."""
    check = compare_to_baseline(profile, current, baseline, inputs, runs=runs, warmup=10, threshold=0.05)[0]
    detail = check.detail
    low, high = (float(part.strip().rstrip("%")) / 100 for part in
                 detail.split("95% interval ")[1].split(";")[0].split(" to "))
    return not check.passed, check.actual, low, high


def run_test(name: str, profile, current: Path, baseline: Path, inputs, tries: int, runs: int) -> list:
    results = []
    for i in range(tries):
        results.append(trial(profile, current, baseline, inputs, runs))
        failed, regression, low, high = results[-1]
        print(f"  {name} try {i + 1:2d}: {'FAIL' if failed else 'pass'}  regression {regression:+.1%} "
              f"(95% interval {low:+.1%} to {high:+.1%})", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--slower", type=float, default=0.15, help="extra work of the B model (0.15 = 15%%)")
    parser.add_argument("--layers", type=int, default=20)
    args = parser.parse_args()
    profile = load_profile("x86-64-cpu")
    inputs = [{"x": np.random.default_rng(i).standard_normal((8, WIDTH)).astype(np.float32)} for i in range(4)]
    with tempfile.TemporaryDirectory(prefix="edgeslim-gate-noise-") as tmp:
        a = matmul_chain(Path(tmp) / "a.onnx", args.layers)
        twin = Path(tmp) / "a-copy.onnx"
        shutil.copy(a, twin)
        b = matmul_chain(Path(tmp) / "b.onnx", round(args.layers * (1 + args.slower)))
        print(f"load average before: {os.getloadavg()[0]:.2f}; {args.tries} tries each, {args.runs} interleaved runs")
        aa = run_test("A/A", profile, twin, a, inputs, args.tries, args.runs)
        ab = run_test("A/B", profile, b, a, inputs, args.tries, args.runs)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    for name, results, bad in (("A/A (same model)", aa, True), (f"A/B ({args.slower:.0%} slower)", ab, False)):
        failures = sum(r[0] for r in results)
        regression = statistics.median(r[1] for r in results)
        what = f"false failures {failures}/{len(results)}" if bad else f"caught {failures}/{len(results)}"
        print(f"{name}: {what}; median regression {regression:+.1%}, "
              f"median interval {statistics.median(r[2] for r in results):+.1%} to "
              f"{statistics.median(r[3] for r in results):+.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
