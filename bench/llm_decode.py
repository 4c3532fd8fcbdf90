"""Decode speed of a causal-LM run's ONNX models on this machine: prefill latency and decode tokens/s.

Measures every ONNX artifact of a finished ``edgeslim run`` folder (the fp32 teacher, the INT8
teacher baseline, and each ONNX stage: export, quantize, bundle) with
:func:`edgeslim.report.lm_eval.measure_decode` at each thread count, on prompts cut from the
recipe's held-out text, and prints one table (plus size and, from ``report.json`` when present,
perplexity and greedy agreement with the teacher). Figures depend on the machine and its load:
rerun it rather than quoting numbers from elsewhere.

    python bench/llm_decode.py runs/smollm2-edge [--threads 1 2] [--prompts 8] [--runs 8] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def onnx_artifacts(run_dir: Path) -> list[tuple[str, Path]]:
    """(name, folder) of every ONNX artifact of a run, baselines first, then stages in order."""
    found = []
    for group in ("baselines", "stages"):
        for folder in sorted((run_dir / group).glob("*")):
            if (folder / "model.onnx").is_file() and (folder / "manifest.json").is_file():
                found.append((folder.name, folder))
    order = {"teacher-fp32": 0, "teacher-int8": 1}
    return sorted(found, key=lambda item: (order.get(item[0], 2), item[0]))


def prompts_from(run_dir: Path, count: int) -> list[str]:
    """First halves of the held-out texts the run's report was scored on (as the matrix uses)."""
    from edgeslim.recipe import load_recipe
    from edgeslim.data import load_data
    from edgeslim.report.matrix import lm_prompts

    report = json.loads((run_dir / "report" / "report.json").read_text())
    recipe = load_recipe(report["recipe"]["path"])
    data = load_data(recipe.data, recipe.base_dir, recipe.task)
    return lm_prompts([ex.text for ex in data.eval], count)


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoTokenizer

    from edgeslim.report.lm_eval import measure_decode

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    report_path = args.run_dir / "report" / "report.json"
    if not report_path.is_file():
        print(f"{report_path} does not exist; run 'edgeslim run RECIPE --out {args.run_dir}' first", file=sys.stderr)
        return 2
    scored = {a["name"]: a for a in json.loads(report_path.read_text())["artifacts"]}
    prompts = prompts_from(args.run_dir, args.prompts)
    print(f"{len(prompts)} prompts, {args.new_tokens} new tokens, {args.runs} timed generations per cell")
    header = f"{'artifact':<16} {'size MB':>8} {'ppl':>9} {'agree':>6} {'thr':>3} {'prefill p50 ms':>15} {'decode tok/s':>13} {'peak MB':>8}"
    print(header)
    print("-" * len(header))
    for name, folder in onnx_artifacts(args.run_dir):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        record = next((r for r in scored.values() if Path(r["path"]).name == folder.name), {})
        size_mb = (record.get("size_bytes") or 0) / 1e6
        ppl, agree = record.get("perplexity"), record.get("agreement")
        for threads in args.threads:
            cell = measure_decode(folder / "model.onnx", tokenizer, prompts, threads=threads,
                                  new_tokens=args.new_tokens, warmup=args.warmup, runs=args.runs)
            if cell["status"] != "measured":
                print(f"{name:<16} {size_mb:>8.1f} error: {cell['reason']}")
                continue
            print(f"{name:<16} {size_mb:>8.1f} {ppl if ppl is not None else float('nan'):>9.2f} "
                  f"{agree if agree is not None else float('nan'):>6.3f} {threads:>3} {cell['latency_ms']['p50']:>15.1f} "
                  f"{cell['decode_tokens_per_s']:>13.1f} {cell['peak_memory_mb'] or float('nan'):>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
