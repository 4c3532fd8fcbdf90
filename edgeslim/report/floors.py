"""What a model must beat to be worth anything, and how sure a task figure is.

The floor is always guessing the eval split's majority class (classification) or a unigram model of
the training text (causal LM); the gate fails a teacher or release not significantly better than it.
The interval of an artifact's accuracy (Wilson) or perplexity (bootstrap over texts) is what
dominance and the report use to call two figures the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeslim.artifacts import Artifact


def quality_interval(score: dict[str, Any], task: str, examples: int) -> dict[str, Any]:
    """The 95% interval of an artifact's task figure: Wilson's for accuracy on ``examples``, a
    bootstrap over eval texts for perplexity."""
    import math

    from edgeslim.stats import bootstrap_interval, wilson_interval

    if task == "causal-lm" and score.get("nll"):
        low, high = bootstrap_interval([t for t, _ in score["nll"]], [n for _, n in score["nll"]])
        return {"perplexity_interval": [round(math.exp(low), 6), round(math.exp(high), 6)]}
    if score.get("accuracy") is None:
        return {}
    low, high = wilson_interval(int(round(score["accuracy"] * examples)), examples)
    return {"accuracy_interval": [round(low, 6), round(high, 6)]}


def floor(recipe, data, examples, teacher: Artifact) -> dict[str, Any]:
    """What a model must beat to be worth anything: always guessing the eval split's majority class
    (classification), or a unigram model of the training text (causal LM)."""
    if recipe.task == "causal-lm":
        return unigram_floor(data, examples, teacher, recipe.data.max_length)
    counts = np.bincount([ex.label for ex in examples], minlength=len(data.labels))
    majority = int(np.argmax(counts))
    return {"kind": "majority-class", "label": data.labels[majority], "rate": round(float(counts[majority] / len(examples)), 6),
            "examples": len(examples)}


def unigram_floor(data, examples, teacher: Artifact, max_length: int) -> dict[str, Any]:
    """Perplexity on the eval texts of a unigram model of the training texts (teacher's tokenizer,
    add-one smoothing), over the same predicted positions the models are scored on."""
    import math

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher.path)
    vocab = len(tokenizer)
    counts = np.ones(vocab, dtype=np.float64)
    for text in [ex.text for ex in data.train] + list(data.unlabeled):
        ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
        np.add.at(counts, [i for i in ids if i < vocab], 1.0)
    log_p = np.log(counts / counts.sum())
    total, count = 0.0, 0
    for ex in examples:
        ids = tokenizer(ex.text, truncation=True, max_length=max_length)["input_ids"][1:]
        total -= float(sum(log_p[i] for i in ids if i < vocab))
        count += len(ids)
    return {"kind": "unigram", "perplexity": round(math.exp(total / max(count, 1)), 6), "tokens": count}
