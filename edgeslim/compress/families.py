"""Which architectures the structural stages (prune, lowrank) know, by config ``model_type``.

Torch-free, so recipes are checked without importing torch; :mod:`edgeslim.compress.hf_fixups`
finds the modules of each family in a loaded model.
"""

from __future__ import annotations

BERT_FAMILY = ("bert", "roberta", "xlm-roberta", "electra", "camembert", "ernie")
LLAMA_FAMILY = ("llama", "mistral", "qwen2")
#: Model types whose layers share one set of weights (no list of per-layer blocks to select from).
SHARED_LAYER_TYPES = ("albert",)


def family_of_type(model_type: str | None) -> str | None:
    """``"bert"``, ``"llama"`` or ``None`` for a config's ``model_type``."""
    if model_type in BERT_FAMILY:
        return "bert"
    if model_type in LLAMA_FAMILY:
        return "llama"
    return None


def supported_types() -> str:
    return ", ".join(BERT_FAMILY + LLAMA_FAMILY)
