"""Does the nvidia-gpu profile really measure on the GPU? Run it on a machine with an NVIDIA GPU.

    make gpu-check            # creates .venv-gpu with the pinned onnxruntime-gpu, then runs this
    .venv-gpu/bin/python bench/gpu_check.py [--runs 200] [--run-dir runs/minilm-sentiment]

Builds tiny models of each precision the matrix ships (fp32, fp16, QDQ INT8, MatMulNBits INT4: a
chain of 1024x1024 MatMuls), adds the demo's artifacts when a run folder is given, and measures each
with the ``nvidia-gpu`` profile (CUDA execution provider) and the ``x86-64-cpu`` profile. Printed per
model: the cell's status (``measured`` only when onnxruntime really activated CUDA; else ``error`` or
``skipped`` with the reason), the share of node runs CUDA executed (``node_placement``), the GPU and
CPU p50 and their ratio. Without onnxruntime-gpu or a GPU every GPU cell says why, and the script
still exits 0: what it prints is the evidence.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeslim.targets.profile import load_profile  # noqa: E402
from edgeslim.targets.runners import measure  # noqa: E402

WIDTH, LAYERS = 1024, 8


def chain(path: Path, dtype=np.float32) -> Path:
    """``LAYERS`` MatMuls of WIDTH x WIDTH with a Relu between them, in ``dtype``."""
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes, inits, current = [], [], "x"
    for i in range(LAYERS):
        inits.append(numpy_helper.from_array((rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(dtype), f"w{i}"))
        nodes += [helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        current = f"r{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", elem, [16, WIDTH])],
                              [helper.make_tensor_value_info(current, elem, [16, WIDTH])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def qdq_int8(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"x": np.random.default_rng(i).standard_normal((16, WIDTH)).astype(np.float32)}
                               for i in range(8)])

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8)
    return dst


def int4(src: Path, dst: Path) -> Path:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=32, is_symmetric=True)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst))
    return dst


def models(folder: Path, run_dir: Path | None) -> tuple[dict[str, Path], dict[str, list]]:
    fp32 = chain(folder / "fp32.onnx")
    built = {"chain-fp32": fp32, "chain-fp16": chain(folder / "fp16.onnx", np.float16),
             "chain-qdq-int8": qdq_int8(fp32, folder / "int8.onnx"), "chain-int4": int4(fp32, folder / "int4.onnx")}
    feeds = {"x": np.random.default_rng(0).standard_normal((16, WIDTH)).astype(np.float32)}
    inputs = {name: [{"x": feeds["x"].astype(np.float16 if "fp16" in name else np.float32)}] for name in built}
    if run_dir is not None:
        from transformers import AutoTokenizer

        for name, folder_name in (("demo-teacher-fp32", "baselines/teacher-fp32"), ("demo-release", "model")):
            model_dir = run_dir / folder_name
            if (model_dir / "model.onnx").is_file():
                encoded = AutoTokenizer.from_pretrained(model_dir)("an example tweet to time the model", return_tensors="np")
                built[name] = model_dir / "model.onnx"
                inputs[name] = [{k: np.asarray(v, dtype=np.int64) for k, v in encoded.items()}]
    return built, inputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/minilm-sentiment"))
    args = parser.parse_args()
    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__}; providers available: {', '.join(onnxruntime.get_available_providers())}")
    gpu, cpu = load_profile("nvidia-gpu"), load_profile("x86-64-cpu")
    with tempfile.TemporaryDirectory(prefix="edgeslim-gpu-") as tmp:
        paths, inputs = models(Path(tmp), args.run_dir if args.run_dir.is_dir() else None)
        first = next(iter(paths))
        settings = {"warmup": 10, "runs": args.runs, "memory": False, "model_inputs": inputs}
        gpu_cells = measure(gpu, paths, inputs[first], **settings)
        cpu_cells = measure(cpu, paths, inputs[first], **settings)
    print(f"{'model':<20} {'gpu status':<10} {'on CUDA':>8} {'gpu p50 ms':>11} {'cpu p50 ms':>11} {'cpu/gpu':>8}  reason")
    for name in paths:
        g, c = gpu_cells[name], cpu_cells[name]
        share = ((g.get("node_placement") or {}).get("by_provider") or {}).get("CUDAExecutionProvider")
        g50 = (g.get("latency_ms") or {}).get("p50")
        c50 = (c.get("latency_ms") or {}).get("p50")
        ratio = f"{c50 / g50:.1f}x" if g50 and c50 else "-"
        print(f"{name:<20} {g['status']:<10} {share if share is not None else '-':>8} "
              f"{g50 if g50 is None else round(g50, 3)!s:>11} {c50 if c50 is None else round(c50, 3)!s:>11} "
              f"{ratio:>8}  {g.get('reason') or ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
