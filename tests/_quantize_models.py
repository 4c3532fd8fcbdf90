"""Tiny models and ONNX exports the quantize tests share (built from configs, fixed seeds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

HIDDEN, HEADS, LAYERS, FFN = 64, 4, 2, 128
WORDS = ["good", "great", "fine", "happy", "love", "bad", "awful", "sad", "hate", "poor", "the", "movie", "is", "was", "very", "not"]


def write_tokenizer(folder: Path) -> int:
    """Save a small WordPiece tokenizer into ``folder``; return its vocabulary size."""
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab += [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(vocab_file)).save_pretrained(folder)
    return len(vocab)


def tiny_bert(folder: Path, seed: int = 0):
    """A tiny BERT classifier saved with its tokenizer in ``folder`` (HF layout); returns the model."""
    from transformers import BertConfig, BertForSequenceClassification

    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = write_tokenizer(folder)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, num_labels=2, max_position_embeddings=64,
    )
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(folder)
    return model


def example_inputs(batch: int = 2, length: int = 12, vocab: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(batch, length)).astype(np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def export_torchscript(model, onnx_file: Path) -> Path:
    """TorchScript export with dynamic batch and sequence axes (what optimum does for BERT)."""
    sample = {k: torch.from_numpy(v) for k, v in example_inputs(1, 8).items()}
    torch.onnx.export(
        model, tuple(sample[k] for k in INPUTS), str(onnx_file), input_names=INPUTS, output_names=["logits"],
        dynamic_axes={k: {0: "batch", 1: "sequence"} for k in INPUTS}, opset_version=17, dynamo=False,
    )
    return onnx_file


def export_dynamo(model, onnx_file: Path) -> Path:
    """torch.onnx dynamo export (leaves value_info that conflicts with re-inferred shapes)."""
    sample = {k: torch.from_numpy(v) for k, v in example_inputs(1, 8).items()}
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    torch.onnx.export(
        model, tuple(sample[k] for k in INPUTS), str(onnx_file), input_names=INPUTS, output_names=["logits"],
        dynamo=True, dynamic_shapes=tuple({0: batch, 1: seq} for _ in INPUTS), external_data=False,
    )
    return onnx_file


def fuse_o2(src: Path, dst: Path) -> Path:
    """onnxruntime transformer optimizer at level 2 (Attention, SkipLayerNormalization ... fused)."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimize_model(str(src), model_type="bert", num_heads=HEADS, hidden_size=HIDDEN, opt_level=2).save_model_to_file(str(dst))
    return dst


def onnx_artifact_dir(model_dir: Path, onnx_file: Path, dst: Path) -> Path:
    """An ONNX artifact folder: ``model.onnx`` plus config and tokenizer files of ``model_dir``."""
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    for item in model_dir.iterdir():
        if item.suffix in (".json", ".txt"):
            shutil.copy2(item, dst / item.name)
    shutil.copy2(onnx_file, dst / "model.onnx")
    (dst / "manifest.json").write_text(json.dumps({"kind": "onnx", "stage": "export"}))
    return dst


def run_onnx(onnx_file: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """First output of ``onnx_file`` on ``feeds`` (only the inputs the graph declares)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})[0]


def initializer_bytes(onnx_file: Path, names: set[str] | None = None) -> dict[str, int]:
    """Raw bytes of each initializer (optionally only those in ``names``)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_file))
    return {
        init.name: numpy_helper.to_array(init).nbytes
        for init in model.graph.initializer
        if names is None or init.name in names
    }


POSITIVE = ["good", "great", "fine", "happy", "love"]
NEGATIVE = ["bad", "awful", "sad", "hate", "poor"]
FILLER = ["the", "movie", "is", "was", "very"]


def sentiment_examples(n: int, seed: int):
    """Short synthetic reviews whose label is the sentiment word they contain (1 = positive)."""
    from edgeslim.data import Example

    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(n):
        label = int(rng.integers(0, 2))
        word = rng.choice(POSITIVE if label else NEGATIVE)
        words = list(rng.choice(FILLER, size=int(rng.integers(2, 5)))) + [word]
        rng.shuffle(words)
        examples.append(Example(" ".join(words), label))
    return examples


def sentiment_data(n_train: int = 128, n_eval: int = 64):
    """A real :class:`edgeslim.data.DataBundle` over the synthetic reviews."""
    from edgeslim.data import DataBundle

    return DataBundle(sentiment_examples(n_train, 1), sentiment_examples(n_eval, 2), ["negative", "positive"], 32)


def trained_tiny_bert(folder: Path, data, seed: int = 0, epochs: int = 4):
    """A tiny BERT fine-tuned on ``data`` (a few seconds on CPU), saved in ``folder``."""
    from transformers import AutoTokenizer

    model = tiny_bert(folder, seed)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model trains ~100x faster without thread contention
    try:
        model.train()
        for epoch in range(epochs):
            for batch in data.batches(tokenizer, "train", batch_size=32, shuffle=True, seed=epoch):
                loss = model(**batch).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(folder)
    return model


def tiny_llama_onnx(folder: Path, seed: int = 0) -> Path:
    """A tiny Llama saved from a config and exported by Optimum with its KV cache; returns the ONNX folder."""
    from optimum.exporters.onnx import main_export
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = folder / "hf"
    hf.mkdir(parents=True, exist_ok=True)
    vocab_size = write_tokenizer(hf)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=2, eos_token_id=3, pad_token_id=0, tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).eval().save_pretrained(hf)
    out = folder / "onnx"
    main_export(str(hf), output=str(out), task="text-generation-with-past", opset=18, no_post_process=True)
    return out
