"""The one scoring path: task metrics of any artifact on eval examples, for every caller.

The quantize stage (to choose a candidate), the benchmark matrix (for the report) and the gate (which
reads the report) all get their accuracy and perplexity from :func:`score_examples`, so the number
that chose a candidate is the number the gate judges. Classifiers are run the way a device runs
them: batch 1, each text at its real length (no padding: dynamic INT8 computes activation ranges
over the whole input, pads included, so padded batches would score a different model). Causal LMs
are scored by :mod:`edgeslim.report.lm_eval` (perplexity, next-token accuracy, per-text sums).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def onnx_session(onnx_path: Path, threads: int = 1):
    """A CPU onnxruntime session with a fixed thread count (reproducible numbers)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def onnx_logits(onnx_path: Path, tokenizer, texts: list[str], max_length: int) -> np.ndarray:
    """Classifier logits of an ONNX model for ``texts``: one text per call at its real length."""
    from edgeslim.export.quantize_measure import complete_feeds

    session = onnx_session(onnx_path)
    output = session.get_outputs()[0].name
    rows = []
    for text in texts:
        enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="np")
        feed = complete_feeds(session, {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()})
        rows.append(session.run([output], feed)[0][0])
    return np.stack(rows)


def torch_logits(model_dir: Path, tokenizer, texts: list[str], max_length: int) -> np.ndarray:
    """Classifier logits of a saved torch model, one text per call like :func:`onnx_logits`."""
    import torch

    from edgeslim.compress.lowrank import load_factorized

    model = load_factorized(model_dir, "text-classification")
    rows = []
    with torch.inference_mode():
        for text in texts:
            enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
            rows.append(model(**enc).logits[0].float().numpy())
    return np.stack(rows)


def score_examples(model: Path, kind: str, tokenizer, examples, task: str, max_length: int) -> dict[str, Any]:
    """Task metrics of one model (``kind`` ``torch`` folder, or ``onnx`` file) on ``examples``.

    Classification: ``accuracy``, ``predictions`` (class ids), ``correct`` and ``examples`` (counts,
    for intervals and tests). Causal LM: ``perplexity``, ``accuracy`` (next-token), ``nll`` (per text
    ``[summed NLL, predicted tokens]``) from :func:`edgeslim.report.lm_eval.text_scores`.
    """
    if not examples:
        raise ValueError("no eval examples to score on")
    texts = [ex.text for ex in examples]
    if task == "causal-lm":
        from edgeslim.report.lm_eval import load_decoder_at, text_scores

        return text_scores(load_decoder_at(Path(model), kind), tokenizer, texts, max_length)
    logits = (torch_logits if kind == "torch" else onnx_logits)(Path(model), tokenizer, texts, max_length)
    predictions = np.argmax(logits, axis=-1)
    correct = int(np.sum(predictions == np.asarray([ex.label for ex in examples])))
    return {"accuracy": round(correct / len(examples), 6), "predictions": predictions.tolist(),
            "correct": correct, "examples": len(examples)}


def accuracy(logits: np.ndarray, labels: list[int]) -> float:
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(labels)))


def agreement(predictions: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of examples on which two models predict the same class."""
    return float(np.mean(np.asarray(predictions) == np.asarray(reference)))
