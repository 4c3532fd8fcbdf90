"""Which compression method gets a causal LM below plain INT4 of its teacher? Each method run on a
finished causal-LM run's teacher with edgeslim's own stages, then quantized to INT4 and scored on the
run's held-out text.

    .venv/bin/python bench/llm_methods.py runs/smollm2-edge [--steps 40] [--texts 300] [--methods ...]

Methods (each ends in the same INT4 quantization, ``--algorithm``, block 32, table and head INT4):

* ``int4``: the teacher quantized, no training (the baseline every method must beat);
* ``qad``: quantization-aware distillation (stage ``distill`` with ``quantization_aware``): every
  block of the teacher kept, trained ``--steps`` steps against the fp32 teacher's top-64 logits through
  the 4-bit grid it ships with;
* ``prune-ffn``: width pruning (stage ``prune``, ``ffn: 0.25``, Taylor importance) with ``--steps``
  steps of KD recovery;
* ``prune-hidden``: the same with ``hidden: 0.125`` (the residual width of every block, 576 -> 512);
* ``prune-ffn-qad``: ``prune-ffn`` followed by ``qad``.

Each row: size, held-out perplexity with its 95% bootstrap interval (as the report computes it),
greedy agreement with the fp32 teacher, decode tokens/s at one thread beside the fp32 teacher's
(read the ratio), and the method's wall time. Training shares the machine with nothing else here;
run it on idle cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm_int4 import agreement, decode_speed, held_out, quality_columns, score  # noqa: E402  (bench/llm_int4.py: the run's text, the report's scores)

TRAINING = {"batch_size": 8, "lr": 5e-5}


def methods(steps: int) -> dict[str, list[tuple[str, dict]]]:
    """name -> the compress stages (stage name, config) run on the teacher before export."""
    qad = ("distill", {"layers": None, "data": "labeled", "losses": {"tokens": {"kind": "forward_kl", "top_k": 64}},
                       "temperature": 1.0, "alpha": 1.0, "max_steps": steps, "checkpoint_every": 0,
                       "warmup_ratio": 0.1, "quantization_aware": {"grid": "offset", "block_size": 32}, **TRAINING})
    recovery = {"steps": steps, "temperature": 1.0, **TRAINING}
    prune_ffn = ("prune", {"ffn": 0.25, "importance": "taylor", "samples": 16, "round_to": 32, "recovery": recovery})
    prune_hidden = ("prune", {"hidden": 0.125, "importance": "taylor", "samples": 16, "round_to": 32,
                              "recovery": recovery})  # 576 -> 512 wide: a multiple of the INT4 block
    return {"int4": [], "qad": [qad], "prune-ffn": [prune_ffn], "prune-hidden": [prune_hidden],
            "prune-ffn-qad": [prune_ffn, qad]}


def run_stages(stages: list[tuple[str, dict]], run_dir: Path, work: Path, recipe, data):
    """The teacher artifact of ``run_dir`` through ``stages``; the last artifact."""
    from edgeslim.artifacts import Artifact
    from edgeslim.stage import StageContext
    from edgeslim.stages import get_stage

    teacher = Artifact(run_dir / "stages" / "00-teacher", "torch", {"key": "bench-teacher"})
    artifact = teacher
    for index, (name, keys) in enumerate(stages):
        spec = get_stage(name)
        out = work / f"{index}-{name}"
        out.mkdir(parents=True)
        ctx = StageContext(out_dir=out, recipe=recipe, data=data, teacher=teacher, quiet=True, seed=0,
                           extras={"cache_dir": str(work / ".cache")})
        artifact = spec.run(spec.config(**keys), artifact, ctx)
    return artifact


def main(argv: list[str] | None = None) -> int:
    import json

    from transformers import AutoTokenizer

    from edgeslim.artifacts import copy_sidecar_files
    from edgeslim.data import load_data
    from edgeslim.export.onnx import export_onnx
    from edgeslim.quantize.specs import make_spec, quantize_with
    from edgeslim.recipe import load_recipe
    from edgeslim.report.matrix import lm_prompts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--steps", type=int, default=40, help="training steps of each method (batch 8)")
    parser.add_argument("--texts", type=int, default=300)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--runs", type=int, default=6, help="timed generations per decode measurement")
    parser.add_argument("--algorithm", default="offset", choices=["offset", "rtn"])
    parser.add_argument("--methods", nargs="+", default=list(methods(1)), choices=list(methods(1)))
    args = parser.parse_args(argv)
    teacher_onnx = args.run_dir / "baselines" / "teacher-fp32" / "model.onnx"
    if not teacher_onnx.is_file() or not (args.run_dir / "stages" / "00-teacher" / "config.json").is_file():
        print(f"{args.run_dir} holds no finished causal-LM run (stages/00-teacher, baselines/teacher-fp32); "
              "run 'edgeslim run smollm2-edge --out DIR' first", file=sys.stderr)
        return 2
    report = json.loads((args.run_dir / "report" / "report.json").read_text())
    recipe = load_recipe(report["recipe"]["path"])
    data = load_data(recipe.data, recipe.base_dir, recipe.task)
    tokenizer = AutoTokenizer.from_pretrained(teacher_onnx.parent)
    texts, max_length = held_out(args.run_dir, args.texts)
    prompts = lm_prompts(texts, args.prompts)
    spec = make_spec(mode="weight_only", algorithm=args.algorithm, block_size=32, accuracy_level=4,
                     quantize_embeddings=True)
    print(f"{len(texts)} held-out texts; {args.steps} training steps of {TRAINING['batch_size']}; INT4 {spec.label()}")
    header = (f"{'method':<14} {'size MiB':>8} {'ppl':>7} {'95% interval':>15} {'agree':>6} {'tok/s':>7} "
              f"{'fp32 tok/s':>10} {'x fp32':>6} {'minutes':>7}")
    print(header + "\n" + "-" * len(header), flush=True)
    reference = score(teacher_onnx, tokenizer, texts, prompts, max_length, args.new_tokens)["greedy"]
    for name in args.methods:
        started = time.time()
        with tempfile.TemporaryDirectory(prefix=f"edgeslim-{name}-") as tmp:
            work = Path(tmp)
            stages = methods(args.steps)[name]
            if stages:
                artifact = run_stages(stages, args.run_dir, work, recipe, data)
                fp32 = export_onnx(artifact.path, work / "onnx", recipe.task)
            else:
                fp32 = teacher_onnx
            (work / "int4").mkdir()
            copy_sidecar_files(fp32.parent, work / "int4")
            model = quantize_with(spec, fp32, work / "int4" / "model.onnx")
            minutes = (time.time() - started) / 60
            result = score(model, tokenizer, texts, prompts, max_length, args.new_tokens)
            agree = agreement(result["greedy"], reference)
            speeds = [decode_speed(m, tokenizer, prompts, args.new_tokens, args.runs) for m in (model, teacher_onnx)]
            print(f"{name:<14} {quality_columns(model, result)} {agree:>6.3f} {speeds[0]:>7.1f} {speeds[1]:>10.1f} "
                  f"{speeds[0] / speeds[1]:>6.2f} {minutes:>7.1f}", flush=True)
    print(f"(perplexity over {result['tokens']} predicted tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
