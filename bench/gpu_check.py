"""Does the nvidia-gpu profile really measure on the GPU? Run it on a machine with an NVIDIA GPU.

    make gpu-check            # creates .venv-gpu with the pinned onnxruntime-gpu, then runs this
    .venv-gpu/bin/python bench/gpu_check.py [--runs 200] [--run-dir runs/minilm-sentiment] [--json gpu.json]

Builds tiny models of each precision the matrix ships (fp32, fp16, QDQ INT8, MatMulNBits INT4: a
chain of 1024x1024 MatMuls), adds the demo's artifacts when a run folder is given, and measures each
with the ``nvidia-gpu`` profile (CUDA execution provider) and the ``x86-64-cpu`` profile. Printed per
model: the cell's status (``measured`` only when onnxruntime really activated CUDA; else ``error`` or
``skipped`` with the reason), the share of node runs CUDA executed (``node_placement``), the GPU and
CPU p50 and their ratio, and the latency the ``nvidia-gpu`` profile's uncalibrated figures predict
(so docs/devices.md can say how far that estimate is from a real GPU). ``--json`` also writes the
cells, the GPU's name and the onnxruntime build. Without onnxruntime-gpu or a GPU every GPU cell says why, and the script
still exits 0: what it prints is the evidence.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeslim.targets.predict import predict_latency_ms  # noqa: E402
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


def gpu_name() -> str:
    """The GPU nvidia-smi reports, or why there is none."""
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip() or "nvidia-smi printed nothing"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"no nvidia-smi ({exc})"


def predicted(profile, paths: dict[str, Path], inputs: dict[str, list]) -> dict[str, float | None]:
    """The profile's predicted ms per model (None where the model cannot be costed)."""
    out = {}
    for name, path in paths.items():
        try:
            out[name] = predict_latency_ms(profile, path, inputs[name])
        except Exception as exc:  # noqa: BLE001 - a prediction that fails is reported, not fatal
            print(f"{name}: no prediction ({exc})")
            out[name] = None
    return out


def _ms(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/minilm-sentiment"))
    parser.add_argument("--json", type=Path, help="also write the cells and the machine here")
    args = parser.parse_args()
    import onnxruntime

    machine = {"gpu": gpu_name(), "onnxruntime": onnxruntime.__version__,
               "providers": onnxruntime.get_available_providers()}
    print(f"GPU: {machine['gpu']}")
    print(f"onnxruntime {machine['onnxruntime']}; providers available: {', '.join(machine['providers'])}")
    gpu, cpu = load_profile("nvidia-gpu"), load_profile("x86-64-cpu")
    with tempfile.TemporaryDirectory(prefix="edgeslim-gpu-") as tmp:
        paths, inputs = models(Path(tmp), args.run_dir if args.run_dir.is_dir() else None)
        first = next(iter(paths))
        settings = {"warmup": 10, "runs": args.runs, "memory": False, "model_inputs": inputs}
        gpu_cells = measure(gpu, paths, inputs[first], **settings)
        cpu_cells = measure(cpu, paths, inputs[first], **settings)
        guesses = predicted(gpu, paths, inputs)
    print(f"{'model':<20} {'gpu status':<10} {'on CUDA':>8} {'gpu p50 ms':>11} {'cpu p50 ms':>11} {'cpu/gpu':>8} "
          f"{'predicted':>10}  reason")
    for name in paths:
        g, c = gpu_cells[name], cpu_cells[name]
        share = ((g.get("node_placement") or {}).get("by_provider") or {}).get("CUDAExecutionProvider")
        g50 = (g.get("latency_ms") or {}).get("p50")
        c50 = (c.get("latency_ms") or {}).get("p50")
        ratio = f"{c50 / g50:.1f}x" if g50 and c50 else "-"
        print(f"{name:<20} {g['status']:<10} {share if share is not None else '-':>8} {_ms(g50):>11} {_ms(c50):>11} "
              f"{ratio:>8} {_ms(guesses[name]):>10}  {g.get('reason') or ''}")
        fallback = (g.get("node_placement") or {}).get("fallback_ops")
        if fallback:
            print(f"{'':<20} not on CUDA: {', '.join(f'{op} x{n}' for op, n in fallback.items())}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "gpu": gpu_cells, "cpu": cpu_cells,
                                         "predicted_ms": guesses}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
