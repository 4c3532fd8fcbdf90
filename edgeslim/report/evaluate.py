"""The one scoring path: task metrics of any artifact on eval examples, for every caller.

The quantize stage (to choose a candidate), the benchmark matrix (for the report) and the gate (which
reads the report) all get their accuracy and perplexity from :func:`score_examples`, so the number
that chose a candidate is the number the gate judges. Classifiers are run the way a device runs
them: batch 1, each text at its real length (no padding: dynamic INT8 computes activation ranges
over the whole input, pads included, so padded batches would score a different model). Causal LMs
are scored by :mod:`edgeslim.report.lm_eval` (perplexity, next-token accuracy, per-text sums).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np


def onnx_session(onnx_path: Path, threads: int = 1):
    """A CPU onnxruntime session with a fixed thread count (reproducible numbers)."""
    from edgeslim.targets.harness import make_session

    return make_session(onnx_path, {"threads": threads})


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


def onnx_logits(onnx_path: Path, tokenizer, texts: list[str], max_length: int) -> np.ndarray:
    """Classifier logits of an ONNX model for ``texts``: one text per call at its real length."""
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
    accepted = set(inspect.signature(model.forward).parameters)
    rows = []
    with torch.inference_mode():
        for text in texts:
            enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
            # a BERT-style tokenizer returns token_type_ids, which MPNet, DistilBERT and others do not take
            rows.append(model(**{k: v for k, v in enc.items() if k in accepted}).logits[0].float().numpy())
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
