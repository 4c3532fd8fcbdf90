"""Task metrics on the eval split: accuracy and agreement with the teacher, for ONNX and torch models.

Every artifact of a run is scored on the same eval examples with the same tokenizer settings, so the
numbers compare; ONNX models are scored with onnxruntime on the CPU (the matrix checks the other
devices' kernels separately).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def onnx_session(onnx_path: Path, threads: int = 0):
    """A CPU onnxruntime session (``threads=0`` lets onnxruntime use every core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def onnx_logits(onnx_path: Path, tokenizer, texts: list[str], max_length: int, batch_size: int = 32) -> np.ndarray:
    """Classifier logits of an ONNX model for ``texts`` (padded batches, the model's own inputs)."""
    session = onnx_session(onnx_path)
    wanted = {inp.name for inp in session.get_inputs()}
    chunks = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                        max_length=max_length, return_tensors="np")
        feed = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in wanted}
        chunks.append(session.run(None, feed)[0])
    return np.concatenate(chunks, axis=0)


def torch_logits(model_dir: Path, tokenizer, texts: list[str], max_length: int, batch_size: int = 32) -> np.ndarray:
    """Classifier logits of a saved torch model (``from_pretrained`` of an artifact folder)."""
    import torch

    from edgeslim.compress.lowrank import load_factorized

    model = load_factorized(model_dir, "text-classification")
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            chunks.append(model(**enc).logits.float().numpy())
    return np.concatenate(chunks, axis=0)


def accuracy(logits: np.ndarray, labels: list[int]) -> float:
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(labels)))


def agreement(predictions: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of examples on which two models predict the same class."""
    return float(np.mean(np.asarray(predictions) == np.asarray(reference)))
