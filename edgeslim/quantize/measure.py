"""What the quantize stage measures about a candidate: task accuracy, output error, latency, size.

Accuracy comes from :func:`edgeslim.report.evaluate.score_examples`, the scoring path the matrix and
the gate use too: for a classifier the fraction of eval examples whose arg-max logit is the label, for
a causal LM next-token accuracy, so both tasks have an "accuracy" whose drop a budget can bound. Output error
compares a candidate's outputs with the fp32 model's on the same feeds. Latency is measured by
:mod:`edgeslim.targets.harness` (the same code the benchmark matrix runs on devices): all models
interleaved round-robin on one thread at batch 1, reported as medians.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnx

from edgeslim.artifacts import onnx_size_bytes
from edgeslim.report.evaluate import complete_feeds


def session(onnx_file: Path, threads: int = 1):
    """A CPU inference session with a fixed thread count (reproducible numbers)."""
    from edgeslim.targets.harness import make_session

    return make_session(onnx_file, {"threads": threads})


def outputs(onnx_file: Path, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """The first output (logits) of ``onnx_file`` for each feed."""
    sess = session(onnx_file)
    return [sess.run([sess.get_outputs()[0].name], complete_feeds(sess, feed))[0] for feed in feeds]


def task_accuracy(onnx_file: Path, tokenizer, examples, task: str, max_length: int = 128) -> float:
    """Accuracy for the recipe's task (classification accuracy, or next-token accuracy for LMs),
    computed by the one scoring path the matrix and the gate use."""
    from edgeslim.report.evaluate import score_examples

    return score_examples(Path(onnx_file), "onnx", tokenizer, examples, task, max_length)["accuracy"]


def output_error(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """Mean absolute output difference, relative to the mean magnitude of the reference outputs."""
    diff = np.mean([np.mean(np.abs(r - c)) for r, c in zip(reference, candidate)])
    scale = np.mean([np.mean(np.abs(r)) for r in reference])
    return float(diff / max(scale, 1e-12))


def interleaved_latency(models: dict[str, Path], feeds: list[dict[str, np.ndarray]], runs: int = 30,
                        warmup: int = 3) -> dict[str, float | None]:
    """Median latency (ms) of each model, interleaved on one thread at batch 1 (``None`` if it failed)."""
    return {name: (float(np.median(samples)) if samples else None)
            for name, samples in interleaved_samples(models, feeds, runs, warmup).items()}


def interleaved_samples(models: dict[str, Path], feeds: list[dict[str, np.ndarray]], runs: int = 30,
                        warmup: int = 3) -> dict[str, list[float]]:
    """Every timed latency (ms, in run order) of each model, interleaved on one thread at batch 1
    (empty if it failed): what :func:`edgeslim.stats.ratio_interval` turns into a comparison."""
    from edgeslim.targets import harness

    first = session(next(iter(models.values())))
    full = [complete_feeds(first, feed) for feed in feeds]
    with tempfile.TemporaryDirectory(prefix="edgeslim-lat-") as tmp:
        inputs = Path(tmp) / "inputs.npz"
        np.savez(inputs, **{f"{i}/{k}": v for i, feed in enumerate(full) for k, v in feed.items()})
        spec = {"models": {k: str(v) for k, v in models.items()}, "inputs": str(inputs), "warmup": warmup,
                "runs": runs, "threads": 1, "inter_op_threads": 1, "outputs": None, "samples": True}
        result = json.loads(json.dumps(harness.run_latency(spec)))
    return {name: cell.get("samples_ms") or [] for name, cell in result.items()}


def weight_nodes(onnx_file: Path, op_types: tuple[str, ...]) -> list[str]:
    """Names, in graph order, of the nodes of ``op_types`` that carry a constant weight.

    These are the nodes a quantization mode turns into integer kernels (the weight of ``MatMul``,
    ``Gemm``, fused ``Attention`` is input 1; the table of ``Gather`` is input 0): the units whose
    sensitivity is measured and which can be excluded.
    """
    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    weight_input = {"Gather": 0, "EmbedLayerNormalization": 2}
    names = []
    for node in graph.node:
        if node.op_type in op_types:
            index = weight_input.get(node.op_type, 1)
            if len(node.input) > index and node.input[index] in constants:
                names.append(node.name)
    return names


def size_bytes(onnx_file: Path) -> int:
    return onnx_size_bytes(Path(onnx_file))
