"""What edgeslim knows about each architecture, by config ``model_type``: one table read by every
stage and check (a new architecture is one entry here plus its tiny test config).

Torch-free, so recipes are checked without importing torch. :mod:`edgeslim.compress.hf_fixups`
finds a structural family's heads and FFN channels in a loaded model; :mod:`edgeslim.export.onnx`
applies a fusion type's onnxruntime rules; :mod:`edgeslim.model_shape` reads the config.json of
every type listed here without transformers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """One model type.

    ``structure``: a layout of :data:`edgeslim.compress.hf_fixups.LAYOUTS` (``"bert"``:
    ``encoder.layer[i].attention.self.query`` ..., ``"distilbert"``, ``"mpnet"``, ``"deberta"``, ``"gpt2"``, ``"opt"``,
    ``"gpt_neox"``, ``"falcon"``) or ``"llama"`` (``layers[i].self_attn.q_proj`` + ``mlp.gate_proj``,
    grouped-query heads) where prune and lowrank ``targets`` find heads and FFN channels; ``None`` where
    they do not (lowrank ``modules`` still work).
    ``fusion``: the onnxruntime.transformers optimizer model type whose fusion rules fit, or ``None``.
    ``shared_layers``: every layer uses one set of weights (no per-layer blocks to select or fuse).
    ``heads_with_hidden``: why this type's heads are removed only together with hidden width, the
    same number in every layer (its config cannot describe fewer heads at the same width).
    ``genai``: onnxruntime-genai 0.18 loads its bundle and generates (gpt2 loads but fails on the
    inputs of Optimum's export; gpt_neox, opt and falcon are not model types it knows).
    """

    structure: str | None = None
    fusion: str | None = None
    shared_layers: bool = False
    heads_with_hidden: str | None = None  # why heads go only together with hidden width, evenly
    genai: bool = False  # onnxruntime-genai runs its KV-cache decoder (bench/architectures.py checked it)


DERIVED_HEAD_SIZE = ("its attention derives the head size from hidden_size / num_attention_heads and keeps no "
                     "pruned_heads")

FAMILIES: dict[str, Family] = {
    # encoders
    "bert": Family("bert", "bert"),
    "roberta": Family("bert", "bert"),
    "xlm-roberta": Family("bert", "bert"),
    "electra": Family("bert", "bert"),
    "camembert": Family("bert", "bert"),
    "ernie": Family("bert", None),
    "distilbert": Family("distilbert", "bert"),
    "mpnet": Family("mpnet", "bert", heads_with_hidden=(
        "MPNet's relative position bias is one table with a column per head, shared by every layer, and "
        "transformers rebuilds it with all heads on load")),
    # the bert rules fuse each use of ALBERT's shared weights into its own copy, so the file grows
    # with the layer count; unfused, the graph keeps one copy
    "albert": Family(None, None, shared_layers=True),
    "deberta-v2": Family("deberta", heads_with_hidden=(
        "DeBERTa-v2 builds its attention output projection hidden_size x hidden_size and keeps no pruned_heads")),
    "mobilebert": Family(),
    "modernbert": Family(),
    # decoders; the gpt2 rules fuse Llama-family RMSNorm (SimplifiedLayerNormalization) and rotary embeddings
    "llama": Family("llama", "gpt2", genai=True),
    "mistral": Family("llama", "gpt2", genai=True),
    "qwen2": Family("llama", "gpt2", genai=True),
    "qwen3": Family("llama", "qwen3", genai=True),
    "gemma2": Family("llama", genai=True),
    "phi3": Family("llama", genai=True),  # fused qkv_proj and gate_up_proj, cut through views of their rows
    "gpt2": Family("gpt2", "gpt2", heads_with_hidden=(
        "transformers can replay GPT-2's pruned_heads, but the KV-cache export sizes every layer's cache by n_head")),
    "gpt_neox": Family("gpt_neox", "gpt_neox", heads_with_hidden=DERIVED_HEAD_SIZE),
    "opt": Family("opt", heads_with_hidden=DERIVED_HEAD_SIZE),
    "falcon": Family("falcon", heads_with_hidden=DERIVED_HEAD_SIZE),
}


def family_of_type(model_type: str | None) -> str | None:
    """The structural family (``"bert"``, ``"llama"``) of a config's ``model_type``, or ``None``."""
    family = FAMILIES.get(model_type or "")
    return family.structure if family else None


def supported_types() -> str:
    """The model types prune and lowrank ``targets`` work on, for messages."""
    return ", ".join(name for name, family in FAMILIES.items() if family.structure)


def fusion_type(model_type: str | None) -> str | None:
    family = FAMILIES.get(model_type or "")
    return family.fusion if family else None


def heads_with_hidden_reason(model_type: str | None) -> str | None:
    """Why ``model_type`` loses heads only together with hidden width (None: heads go per layer)."""
    family = FAMILIES.get(model_type or "")
    return family.heads_with_hidden if family else None


def genai_runs(model_type: str | None) -> bool:
    family = FAMILIES.get(model_type or "")
    return bool(family and family.genai)


def shares_layers(model_type: str | None) -> bool:
    family = FAMILIES.get(model_type or "")
    return bool(family and family.shared_layers)
