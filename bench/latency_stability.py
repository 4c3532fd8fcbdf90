"""How stable are the local runner's figures? Repeat the same measurement and print the spread.

    .venv/bin/python bench/latency_stability.py [--model M.onnx] [--repeats 5] [--runs 200] [--counts 2]

Each repeat is a fresh measuring process (``edgeslim.targets.measure`` on the ``x86-64-cpu``
profile). Printed: wall-clock and thread-CPU p50/p90 per repeat and the p50 spread of each,
(max - min) / median; the p50 ratio of the model to a byte-identical twin measured interleaved with
it (how fair an interleaved comparison is); the load average before and after; then the callgrind
instruction count per inference, repeated ``--counts`` times, and whether it was identical.
Without ``--model`` a BERT (hidden 128, 4 layers, random weights) is exported to a temp folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _targets_models import export_bert, text_inputs  # noqa: E402

from edgeslim.targets.profile import load_profile  # noqa: E402
from edgeslim.targets.runners import measure  # noqa: E402
from edgeslim.targets.runners.local import CountPlan, count_instructions  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--device", default="x86-64-cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--counts", type=int, default=2, help="callgrind repeats (0 to skip)")
    parser.add_argument("--seq", type=int, default=32)
    args = parser.parse_args()
    profile = load_profile(args.device)
    inputs = text_inputs(8, args.seq)
    print("load average before: %.2f %.2f %.2f" % os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or export_bert(Path(tmp) / "bert.onnx", hidden=128, layers=4)
        print(f"model {model.name}, device {profile.name} ({profile.runtime.threads} thread(s)), "
              f"{args.repeats} repeats x {args.runs} runs after {args.warmup} warm-up, seq {args.seq}")
        twin = Path(tmp) / "twin.onnx"  # a byte-identical copy, measured interleaved with the model
        shutil.copyfile(model, twin)
        p50s, cpu_p50s, ratios = [], [], []
        for repeat in range(args.repeats):
            cells = measure(profile, {"m": model, "twin": twin}, inputs, warmup=args.warmup, runs=args.runs, memory=False)
            cell = cells["m"]
            if cell["status"] != "measured" or cells["twin"]["status"] != "measured":
                print(f"repeat {repeat}: {cell['status']}: {cell['reason']}")
                return 1
            lat, cpu = cell["latency_ms"], cell["cpu_ms"]
            p50s.append(lat["p50"])
            cpu_p50s.append(cpu["p50"])
            ratios.append(lat["p50"] / cells["twin"]["latency_ms"]["p50"])
            print(f"repeat {repeat}: wall p50 {lat['p50']:.3f} ms  p90 {lat['p90']:.3f} ms  p99 {lat['p99']:.3f} ms"
                  f"   | thread CPU p50 {cpu['p50']:.3f} ms  p90 {cpu['p90']:.3f} ms   | p50 / twin's p50 {ratios[-1]:.3f}")
        print(f"ratio of interleaved identical models, p50 / p50: {min(ratios):.3f} .. {max(ratios):.3f} "
              f"(max |1 - ratio| {100 * max(abs(1 - r) for r in ratios):.1f}%)")
        for label, values in (("wall-clock p50", p50s), ("thread-CPU p50", cpu_p50s)):
            median = statistics.median(values)
            print(f"{label} spread run to run: {100 * (max(values) - min(values)) / median:.1f}% of the median "
                  f"({min(values):.3f} .. {max(values):.3f} ms); stdev {100 * statistics.pstdev(values) / median:.1f}%")
        counts = []
        for repeat in range(args.counts):
            start = time.perf_counter()
            counts.append(count_instructions(profile, Path(model), inputs, CountPlan(2, 3)))
            print(f"instructions per inference, count {repeat}: {counts[-1]} ({time.perf_counter() - start:.0f} s under callgrind)")
        if counts and None not in counts:
            spread = (max(counts) - min(counts)) / statistics.median(counts)
            print(f"instruction count identical run to run: {len(set(counts)) == 1} (spread {100 * spread:.4f}%)")
    print("load average after: %.2f %.2f %.2f" % os.getloadavg())
    return 0


if __name__ == "__main__":
    sys.exit(main())
