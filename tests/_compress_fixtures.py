"""Tiny models, inputs and a real stage context for the prune / lowrank / vocab tests."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from edgeslim.artifacts import Artifact
from edgeslim.data import DataBundle, Example
from edgeslim.stage import StageContext

HEAD = 8  # head_dim of the tiny models
TINY_CSV = Path(__file__).resolve().parents[1] / "recipes" / "data" / "tiny-sentiment.csv"
LABELS = ["negative", "neutral", "positive"]


def tiny_bert(layers: int = 2, heads: int = 4, vocab: int = 100) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab, hidden_size=HEAD * heads, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=64, num_labels=3, max_position_embeddings=32)
    return BertForSequenceClassification(config).eval()


def tiny_llama(layers: int = 2, heads: int = 4, kv: int = 2, vocab: int = 100) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=HEAD * heads, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=64, max_position_embeddings=32)
    return LlamaForCausalLM(config).eval()


def inputs(batch: int = 2, length: int = 8, vocab: int = 100) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 5:] = 0  # padding in the second row
    return {"input_ids": torch.randint(0, vocab, (batch, length)), "attention_mask": mask}


@torch.no_grad()
def logits(model, batch):
    return model(**batch).logits


def tiny_data(max_length: int = 24) -> DataBundle:
    """The tiny sentiment CSV: 300 train and 60 eval examples."""
    with open(TINY_CSV, newline="", encoding="utf-8") as handle:
        rows = [Example(r["text"], LABELS.index(r["label"])) for r in csv.DictReader(handle)]
    return DataBundle(rows[:300], rows[300:], LABELS, max_length)


def tiny_tokenizer(workdir: Path, vocab_size: int = 200):
    from edgeslim.teacher import train_wordpiece

    return train_wordpiece([ex.text for ex in tiny_data().train], vocab_size, workdir)


def teacher_artifact(folder: Path, model, tokenizer) -> Artifact:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Artifact(Path(folder), "torch", {})


def stage_context(out_dir: Path, teacher: Artifact, task: str = "text-classification", data=None) -> StageContext:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return StageContext(out_dir=Path(out_dir), recipe=SimpleNamespace(task=task), data=data or tiny_data(),
                        teacher=teacher, quiet=True, seed=0)
