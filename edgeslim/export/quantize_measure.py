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


def session(onnx_file: Path, threads: int = 1):
    """A CPU inference session with a fixed thread count (reproducible numbers)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])


def complete_feeds(sess, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feed`` restricted to the graph's inputs, with what a KV-cache decoder also needs filled in.

    A ``text-generation-with-past`` export takes ``position_ids`` and ``past_key_values.*``; an empty
    past (sequence length 0) makes one call score the whole text.
    """
    batch, length = feed["input_ids"].shape
    out = {}
    for meta in sess.get_inputs():
        if meta.name in feed:
            out[meta.name] = feed[meta.name]
        elif meta.name == "position_ids":
            out[meta.name] = np.tile(np.arange(length, dtype=np.int64), (batch, 1))
        elif meta.name.startswith("past_key_values") or meta.name.startswith("past_"):
            dims = [d if isinstance(d, int) else 0 for d in meta.shape]
            dims[0] = batch
            dtype = np.float16 if "float16" in meta.type else np.float32
            out[meta.name] = np.zeros(dims, dtype=dtype)
        elif meta.name == "token_type_ids":
            out[meta.name] = np.zeros_like(feed["input_ids"])
        else:
            raise ValueError(f"the model needs input {meta.name!r}, which edgeslim cannot fill in")
    return out


def encode(tokenizer, texts: list[str], max_length: int = 128) -> list[dict[str, np.ndarray]]:
    """Each text tokenized alone (batch 1, its real length), as int64 arrays."""
    feeds = []
    for text in texts:
        enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="np")
        feeds.append({k: np.asarray(v, dtype=np.int64) for k, v in enc.items()})
    return feeds


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
