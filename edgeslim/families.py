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

    ``structure``: ``"bert"`` (``encoder.layer[i].attention.self.query`` ...) or ``"llama"``
    (``layers[i].self_attn.q_proj`` + ``mlp.gate_proj``) where prune and lowrank ``targets`` find
    heads and FFN channels; ``None`` where they do not (lowrank ``modules`` still work).
    ``fusion``: the onnxruntime.transformers optimizer model type whose fusion rules fit, or ``None``.
    ``shared_layers``: every layer uses one set of weights (no per-layer blocks to select or fuse).
    """

    structure: str | None = None
    fusion: str | None = None
    shared_layers: bool = False


FAMILIES: dict[str, Family] = {
    # encoders
    "bert": Family("bert", "bert"),
    "roberta": Family("bert", "bert"),
    "xlm-roberta": Family("bert", "bert"),
    "electra": Family("bert", "bert"),
    "camembert": Family("bert", "bert"),
    "ernie": Family("bert", None),
    "distilbert": Family(None, "bert"),
    "mpnet": Family(None, "bert"),
    # the bert rules fuse each use of ALBERT's shared weights into its own copy, so the file grows
    # with the layer count; unfused, the graph keeps one copy
    "albert": Family(None, None, shared_layers=True),
    "deberta-v2": Family(),
    "mobilebert": Family(),
    "modernbert": Family(),
    # decoders; the gpt2 rules fuse Llama-family RMSNorm (SimplifiedLayerNormalization) and rotary embeddings
    "llama": Family("llama", "gpt2"),
    "mistral": Family("llama", "gpt2"),
    "qwen2": Family("llama", "gpt2"),
    "qwen3": Family(None, "qwen3"),
    "gemma2": Family(),
    "phi3": Family(),
    "gpt2": Family(None, "gpt2"),
    "gpt_neox": Family(None, "gpt_neox"),
    "opt": Family(),
    "falcon": Family(),
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


def shares_layers(model_type: str | None) -> bool:
    family = FAMILIES.get(model_type or "")
    return bool(family and family.shared_layers)
