"""Which teacher layers and widths a student keeps: torch-free, so a recipe is checked without
importing torch (:mod:`edgeslim.compress.students` builds the student from these)."""

from __future__ import annotations

from typing import Any

#: The config widths a narrower student may change.
WIDTH_FIELDS = ("hidden_size", "num_attention_heads", "intermediate_size", "num_key_value_heads")


def resolve_layers(layers: Any, num_layers: int) -> list[int]:
    """Teacher layer indices to keep from a recipe value: ``{"every": k}`` (layers k-1, 2k-1, ...,
    always ending with the last layer), a list of indices, or ``None`` (all layers)."""
    if layers is None:
        return list(range(num_layers))
    if isinstance(layers, dict):
        every = int(layers["every"])
        if every < 1:
            raise ValueError("layers.every must be at least 1")
        return list(range(num_layers - 1, -1, -every))[::-1]
    indices = [int(i) for i in layers]
    bad = [i for i in indices if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"student layer {bad[0]} does not exist: the teacher has layers 0..{num_layers - 1}")
    if not indices or sorted(set(indices)) != indices:
        raise ValueError("student layers must be a non-empty, increasing list of teacher layer indices")
    return indices
