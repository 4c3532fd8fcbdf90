"""Measure the demo's targets: release vs fp32 teacher ONNX, 1 thread, batch 1, real eval lengths.

Reads a finished run of a recipe (default: the demo, runs/minilm-sentiment), then measures the fp32
teacher ONNX, the plain dynamic-INT8 teacher and the release model interleaved in one process
(edgeslim's local runner) for several rounds, and prints the median p50 ratio, the size ratio and the
accuracy ratio from the run's report, next to the targets (>= 10x lower p50, >= 15x smaller,
>= 97% of the teacher's accuracy).

    .venv/bin/python bench/demo_targets.py [--run runs/minilm-sentiment] [--rounds 5] [--runs 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/minilm-sentiment"))
    parser.add_argument("--recipe", default=None, help="recipe of the run (default: the report's)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--targets", choices=["demo", "search"], default="demo",
                        help="demo: the first plan's targets; search: issue 20's (a search's x86 release, e.g. "
                             "--run runs/minilm-search/devices/x86-64-cpu), with onnxruntime's per-call floor timed too")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from edgeslim.data import load_data
    from edgeslim.recipe import load_recipe
    from edgeslim.report.gate import find_artifact
    from edgeslim.targets.profile import load_profile
    from edgeslim.targets.runners import measure

    report = json.loads((args.run / "report" / "report.json").read_text())
    recipe = load_recipe(args.recipe or report["recipe"]["path"])
    data = load_data(recipe.data, recipe.base_dir, recipe.task)
    names = [report["teacher"], "teacher-int8", report["release"]]
    records = {name: find_artifact(report, name) for name in names}
    if args.targets == "search":  # an Identity graph on the release's inputs: what any call costs
        names.append("call-floor")
        records["call-floor"] = {"path": str(_call_floor_model(Path(records[report["release"]]["path"]))),
                                 "size_bytes": 0, "accuracy": float("nan")}
    profile = load_profile("x86-64-cpu")
    assert profile.runtime.threads == 1, "the target is defined at 1 thread"

    # Each model gets the inputs of its own tokenizer (a trimmed vocabulary renumbers ids), so the
    # release is timed in its own interleaved group with the teacher run again beside it.
    p50s: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        for name in names[1:]:
            group = {report["teacher"]: records[report["teacher"]], name: records[name]}
            inputs_by_model = {}
            for member, record in group.items():
                tokenizer = AutoTokenizer.from_pretrained(record["path"])
                inputs_by_model[member] = data.encode_each(tokenizer, "eval", args.samples)
            if _same_inputs(inputs_by_model):
                cells = measure(profile, {m: Path(r["path"]) / "model.onnx" for m, r in group.items()},
                                inputs_by_model[report["teacher"]], warmup=20, runs=args.runs)
            else:
                cells = _alternating(profile, group, inputs_by_model, args.runs, measure)
            for member, cell in cells.items():
                if cell["status"] != "measured":
                    raise SystemExit(f"{member}: {cell['status']} ({cell.get('reason')})")
                p50s[member].append(cell["latency_ms"]["p50"])
        print(f"round {round_index + 1}: " + ", ".join(f"{n} p50 {p50s[n][-1]:.3f} ms" for n in names))

    teacher, release = records[report["teacher"]], records[report["release"]]
    median = {name: statistics.median(values) for name, values in p50s.items()}
    speedup = median[report["teacher"]] / median[report["release"]]
    size_ratio = teacher["size_bytes"] / release["size_bytes"]
    accuracy_ratio = release["accuracy"] / teacher["accuracy"]
    print()
    print(f"{'model':<22} {'median p50 ms':>14} {'size MiB':>10} {'accuracy':>9}")
    for name in names:
        record = records[name]
        print(f"{name:<22} {median[name]:>14.3f} {record['size_bytes'] / 2**20:>10.2f} {100 * record['accuracy']:>8.2f}%")
    print()
    if args.targets == "search":
        _search_targets(median, records, report, teacher, release)
        return
    print(f"p50 latency: {speedup:.1f}x lower than the fp32 teacher (target >= 10x) {'MET' if speedup >= 10 else 'MISSED'}")
    print(f"file size:   {size_ratio:.1f}x smaller (target >= 15x) {'MET' if size_ratio >= 15 else 'MISSED'}")
    print(f"accuracy:    {100 * accuracy_ratio:.1f}% of the teacher's (target >= 97%) {'MET' if accuracy_ratio >= 0.97 else 'MISSED'}")


def _search_targets(median, records, report, teacher, release) -> None:
    """Issue 20's targets for a search's x86 release (the plain INT8 teacher stands in for the best
    peer: onnxruntime's dynamic INT8 of the same fused export)."""
    name = report["release"]
    rows = [
        ("p50 vs the fp32 teacher", median[report["teacher"]] / median[name], 20, "x lower"),
        ("p50 vs the INT8 teacher (peer stand-in)", median["teacher-int8"] / median[name], 8, "x lower"),
        ("accuracy, share of the teacher's", 100 * release["accuracy"] / teacher["accuracy"], 99.5, "%"),
        ("agreement with the teacher", 100 * (release.get("agreement") or 0), 96, "%"),
    ]
    for label, value, target, unit in rows:
        print(f"{label:<42} {value:8.2f}{unit} (target >= {target}{unit}) {'MET' if value >= target else 'MISSED'}")
    floor = median[name] / median["call-floor"]
    print(f"{'p50 over onnxruntime per-call floor':<42} {floor:8.2f}x (target <= 8x) {'MET' if floor <= 8 else 'MISSED'}")


def _call_floor_model(release_dir: Path) -> Path:
    """An ONNX graph with the release's inputs and one Identity: onnxruntime's cost of a call."""
    import tempfile

    import onnx
    from onnx import helper

    model = onnx.load(str(release_dir / "model.onnx"), load_external_data=False)
    inputs = list(model.graph.input)
    graph = helper.make_graph([helper.make_node("Identity", [inputs[0].name], ["out"])], "call_floor", inputs,
                              [helper.make_tensor_value_info("out", inputs[0].type.tensor_type.elem_type, None)])
    folder = Path(tempfile.mkdtemp(prefix="edgeslim-floor-"))
    for sidecar in release_dir.glob("tokenizer*"):
        (folder / sidecar.name).write_bytes(sidecar.read_bytes())
    for sidecar in ("special_tokens_map.json", "vocab.txt", "config.json"):
        if (release_dir / sidecar).is_file():
            (folder / sidecar).write_bytes((release_dir / sidecar).read_bytes())
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              str(folder / "model.onnx"))
    return folder


def _same_inputs(inputs_by_model) -> bool:
    import numpy as np

    first, *rest = inputs_by_model.values()
    return all(len(a) == len(b) and all(all(np.array_equal(x[k], y[k]) for k in x if k in y) for x, y in zip(a, b))
               for a, b in ((first, r) for r in rest))


def _alternating(profile, group, inputs_by_model, runs, measure):
    """Different token ids per model: measure each alone, alternating, and keep the last of each."""
    cells = {}
    for member, record in group.items():
        cells.update(measure(profile, {member: Path(record["path"]) / "model.onnx"}, inputs_by_model[member],
                             warmup=20, runs=runs))
    return cells


if __name__ == "__main__":
    main()
