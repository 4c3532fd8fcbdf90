"""A model's shape (layers, widths, heads, vocabulary) read from its ``config.json`` without
importing transformers, which imports torch and takes seconds: ``edgeslim check`` and ``edgeslim
init`` answer quickly with it.

Only model types whose config keys are known here are read this way (:data:`READABLE_TYPES`); for
any other, and for hub ids, callers fall back to transformers' ``AutoConfig``, which knows every
architecture and its defaults.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from edgeslim.errors import EdgeslimError
from edgeslim.families import FAMILIES

#: Model types whose ``config.json`` (as ``save_pretrained`` writes it) holds every shape field,
#: under the standard names or the aliases in :data:`ALIASES`: every type of the families table.
READABLE_TYPES = frozenset(FAMILIES)

#: Standard attribute -> the names some architectures use for it in config.json (transformers'
#: ``attribute_map``).
ALIASES = {
    "num_hidden_layers": ("n_layer", "n_layers", "num_layers"),
    "hidden_size": ("n_embd", "dim", "d_model"),
    "num_attention_heads": ("n_head", "n_heads", "num_heads"),
    "intermediate_size": ("n_inner", "hidden_dim", "ffn_dim"),
    "max_position_embeddings": ("n_positions",),
}

#: Sizes every check reads; a config.json without one of them leaves it to transformers' defaults.
CORE_FIELDS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")


class ModelShape(SimpleNamespace):
    """The fields of a ``config.json`` as attributes, with the standard names filled in from their
    aliases; a field the file does not have is an ``AttributeError``, as on a ``PretrainedConfig``."""

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> "ModelShape":
        values = dict(fields)
        for name, aliases in ALIASES.items():
            if values.get(name) is None:
                found = next((values[a] for a in aliases if values.get(a) is not None), None)
                if found is not None:
                    values[name] = found
        if values.get("intermediate_size") is None and values.get("model_type") == "gpt2" and "hidden_size" in values:
            values["intermediate_size"] = 4 * values["hidden_size"]  # GPT-2's n_inner: null means 4 x n_embd
        if isinstance(values.get("pruned_heads"), dict):  # JSON keys are strings; transformers makes them ints
            values["pruned_heads"] = {int(k): list(v) for k, v in values["pruned_heads"].items()}
        if isinstance(values.get("id2label"), dict):
            values.setdefault("num_labels", len(values["id2label"]))
        return cls(**values)


def read_config_json(folder: Path) -> dict[str, Any]:
    """The fields of ``folder/config.json``; one line naming the file when it is not a JSON object."""
    path = Path(folder) / "config.json"
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgeslimError(f"{path} is not a readable JSON config ({type(exc).__name__}); "
                            "give a model folder written by save_pretrained") from None
    if not isinstance(fields, dict):
        raise EdgeslimError(f"{path} must hold a JSON object (a model config), not {type(fields).__name__}")
    return fields


def fast_shape(folder: Path) -> ModelShape | None:
    """The shape of the model in ``folder`` when its type is one this module reads and its file gives
    the core sizes, else ``None`` (transformers then fills what the file leaves to its defaults)."""
    fields = read_config_json(folder)
    if fields.get("model_type") not in READABLE_TYPES or fields.get("auto_map"):
        return None
    shape = ModelShape.from_dict(fields)
    if any(getattr(shape, name, None) is None for name in CORE_FIELDS):
        return None
    return shape

