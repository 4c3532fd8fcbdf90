"""Which INT4 keeps a causal LM's perplexity, at what speed and size? Every weight-only variant of a
run's fp32 export, scored on the run's held-out text.

    .venv/bin/python bench/llm_int4.py runs/smollm2-edge [--texts 300] [--prompts 16] [--runs 6]

Takes the fp32 teacher ONNX of a finished causal-LM ``edgeslim run`` (``baselines/teacher-fp32``) and
quantizes it with edgeslim's own specs (``edgeslim.quantize.specs``): RTN symmetric and asymmetric
(integer zero points), HQQ (float zero points) and float block offsets on the symmetric kernel
(``offset``) at block 32, RTN at block 128, with the embedding
table and the tied LM head in INT4 or left in float; plus dynamic INT8. Each variant is scored like
the report scores an artifact (:func:`edgeslim.report.lm_eval.text_scores`: perplexity over every
predicted token of the run's eval texts, with the bootstrap 95% interval over texts, and next-token
accuracy), its greedy tokens compared with the fp32 model's on prompts cut from the same texts, and
its decode speed measured at one thread (:func:`edgeslim.report.lm_eval.measure_decode`; the fp32
model is measured in the same way, one after another, so read the ratio, not the absolute figure).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: name -> quantize spec keys (``make_spec``); None is the fp32 model itself.
VARIANTS = {
    "fp32": None,
    "int8-dynamic": {"mode": "dynamic"},
    "rtn-sym-b32-emb": {"mode": "weight_only", "algorithm": "rtn", "block_size": 32, "symmetric": True,
                        "accuracy_level": 4, "quantize_embeddings": True},
    "rtn-asym-b32-emb": {"mode": "weight_only", "algorithm": "rtn", "block_size": 32, "accuracy_level": 4,
                         "quantize_embeddings": True},
    "rtn-sym-b128-emb": {"mode": "weight_only", "algorithm": "rtn", "block_size": 128, "symmetric": True,
                         "accuracy_level": 4, "quantize_embeddings": True},
    "hqq-b32-emb": {"mode": "weight_only", "algorithm": "hqq", "block_size": 32, "accuracy_level": 4,
                    "quantize_embeddings": True},
    "hqq-b32": {"mode": "weight_only", "algorithm": "hqq", "block_size": 32, "accuracy_level": 4},
    "offset-b32-emb": {"mode": "weight_only", "algorithm": "offset", "block_size": 32, "accuracy_level": 4,
                       "quantize_embeddings": True},
}


def held_out(run_dir: Path, count: int) -> tuple[list[str], int]:
    """The eval texts of the run's recipe (its data section, as the report used them) and its max_length."""
    from edgeslim.data import load_data
    from edgeslim.recipe import load_recipe

    report = json.loads((run_dir / "report" / "report.json").read_text())
    recipe = load_recipe(report["recipe"]["path"])
    data = load_data(recipe.data, recipe.base_dir, recipe.task)
    return [ex.text for ex in data.eval][:count], data.max_length


def score(model: Path, tokenizer, texts: list[str], prompts: list[str], max_length: int, new_tokens: int) -> dict:
    """Perplexity with its interval, next-token accuracy, and greedy tokens (the report's functions)."""
    from edgeslim.report.lm_eval import OnnxDecoder, greedy_predictions, text_scores
    from edgeslim.stats import bootstrap_interval

    decoder = OnnxDecoder(model, threads=2)
    scores = text_scores(decoder, tokenizer, texts, max_length)
    low, high = bootstrap_interval([n for n, _ in scores["nll"]], [c for _, c in scores["nll"]])
    return {"perplexity": scores["perplexity"], "interval": (math.exp(low), math.exp(high)),
            "accuracy": scores["accuracy"], "tokens": sum(c for _, c in scores["nll"]),
            "greedy": greedy_predictions(decoder, tokenizer, prompts, max_length, new_tokens)}


def decode_speed(model: Path, tokenizer, prompts: list[str], new_tokens: int, runs: int) -> float:
    """Decode tokens/s at one thread on four of the prompts (the report's decode harness)."""
    from edgeslim.report.lm_eval import measure_decode

    cell = measure_decode(model, tokenizer, prompts[:4], threads=1, new_tokens=new_tokens, warmup=1, runs=runs,
                          memory=False)
    return cell.get("decode_tokens_per_s") or float("nan")


def quality_columns(model: Path, result: dict) -> str:
    """A table row's size (MiB), perplexity and its 95% interval."""
    from edgeslim.artifacts import onnx_size_bytes

    low, high = result["interval"]
    return f"{onnx_size_bytes(model) / 2 ** 20:>8.1f} {result['perplexity']:>7.2f} {f'{low:.2f}-{high:.2f}':>15}"


def agreement(tokens: list[int], reference: list[int]) -> float:
    """The share of greedy token positions equal to the reference model's."""
    return sum(a == b for a, b in zip(tokens, reference)) / len(reference)


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoTokenizer

    from edgeslim.quantize.specs import make_spec, quantize_with
    from edgeslim.report.matrix import lm_prompts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--texts", type=int, default=300, help="held-out texts scored (default: the run's 300)")
    parser.add_argument("--prompts", type=int, default=16, help="greedy-agreement and decode prompts")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--runs", type=int, default=6, help="timed generations per decode measurement")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args(argv)
    source = args.run_dir / "baselines" / "teacher-fp32"
    if not (source / "model.onnx").is_file() or not (args.run_dir / "report" / "report.json").is_file():
        print(f"{args.run_dir} holds no finished causal-LM run (baselines/teacher-fp32 and report/report.json); "
              "run 'edgeslim run smollm2-edge --out DIR' first", file=sys.stderr)
        return 2
    tokenizer = AutoTokenizer.from_pretrained(source)
    texts, max_length = held_out(args.run_dir, args.texts)
    prompts = lm_prompts(texts, args.prompts)
    print(f"{len(texts)} held-out texts, {len(prompts)} prompts x {args.new_tokens} greedy tokens, "
          f"decode at 1 thread ({args.runs} timed generations)")
    header = (f"{'variant':<18} {'size MiB':>8} {'ppl':>7} {'95% interval':>15} {'next-tok':>8} {'agree':>6} "
              f"{'tok/s':>7} {'x fp32':>6} {'quant s':>7}")
    print(header + "\n" + "-" * len(header), flush=True)
    reference, fp32_speed = None, None
    with tempfile.TemporaryDirectory(prefix="edgeslim-int4-") as tmp:
        for name in args.variants:
            started = time.time()
            keys = VARIANTS[name]
            model = source / "model.onnx" if keys is None else quantize_with(make_spec(**keys), source / "model.onnx",
                                                                            Path(tmp) / f"{name}.onnx")
            seconds = time.time() - started
            result = score(model, tokenizer, texts, prompts, max_length, args.new_tokens)
            reference = reference or result["greedy"]
            agree = agreement(result["greedy"], reference)
            speed = decode_speed(model, tokenizer, prompts, args.new_tokens, args.runs)
            fp32_speed = fp32_speed or speed
            print(f"{name:<18} {quality_columns(model, result)} {result['accuracy']:>8.4f} {agree:>6.3f} {speed:>7.1f} "
                  f"{speed / fp32_speed:>6.2f} {seconds:>7.0f}", flush=True)
    print(f"(perplexity over {result['tokens']} predicted tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
