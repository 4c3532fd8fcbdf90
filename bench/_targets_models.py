"""Small real transformer models for the targets benchmarks, exported from configs (nothing fetched)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def export_bert(path: Path, hidden: int, layers: int, seed: int = 0, int8: bool = False) -> Path:
    """A BERT classifier with random weights (``hidden`` wide, ``layers`` deep) as ONNX; INT8 on request."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from edgeslim.targets.calibrate import export_token_model

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=1000, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                        max_position_embeddings=128)
    fp32 = Path(path).with_suffix(".fp32.onnx") if int8 else Path(path)
    export_token_model(BertForSequenceClassification(config), fp32, "logits")
    if not int8:
        return fp32
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8)
    return Path(path)


def text_inputs(count: int, seq: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` batch-1 token inputs of length ``seq``."""
    rng = np.random.default_rng(seed)
    return [{"input_ids": rng.integers(0, 1000, (1, seq)).astype(np.int64),
             "attention_mask": np.ones((1, seq), dtype=np.int64)} for _ in range(count)]
