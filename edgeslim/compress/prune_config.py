"""The ``prune`` stage's recipe keys (see docs/compress.md) and its registration.

Torch-free, so ``edgeslim check`` reads and checks a recipe without importing torch; the stage itself
is :func:`edgeslim.compress.prune.run`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgeslim.families import family_of_type, heads_with_hidden_reason, supported_types
from edgeslim.compress.recovery_config import Recovery
from edgeslim.stage import StageConfig, register_stage


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _fraction(name: str, value: float | None) -> float | None:
    if value is not None and not 0 <= value < 1:
        raise ValueError(f"{name} must be a fraction in [0, 1), not {value}")
    return value


class LayerPrune(_Strict):
    """Per-layer override: a ratio, or for ``heads`` the list of heads (Llama: K/V groups) to remove."""

    heads: float | list[int] | None = None
    ffn: float | None = None

    @field_validator("ffn")
    @classmethod
    def _ffn(cls, value):
        return _fraction("ffn", value)

    @field_validator("heads")
    @classmethod
    def _heads(cls, value):
        if isinstance(value, float):
            _fraction("heads", value)
        if isinstance(value, list) and (len(set(value)) != len(value) or any(h < 0 for h in value)):
            raise ValueError("heads list must name distinct head numbers >= 0")
        return value


class PruneConfig(StageConfig):
    """What fraction of heads and FFN channels to remove, how to rank them, and where."""

    heads: float = Field(0.0, description="fraction of attention heads (Llama: K/V groups) removed")
    ffn: float = Field(0.0, description="fraction of FFN channels removed")
    hidden: float = Field(0.0, description="fraction of hidden (residual) channels removed (all but the Llama "
                                            "family lose heads in proportion, so the head size stays)")
    gqa: Literal["groups", "queries"] = Field(
        "groups", description="Llama heads: remove whole K/V groups, or query heads within every group")
    importance: Literal["magnitude", "taylor", "calibration"] = "magnitude"
    scope: Literal["uniform", "global"] = "uniform"
    layers: dict[int, LayerPrune] = Field(default_factory=dict)
    round_to: int = Field(1, ge=1, description="FFN widths kept are multiples of this (8/16 suit SIMD)")
    samples: int = Field(32, ge=1, description="examples for taylor/calibration importance")
    recovery: Recovery = Recovery()

    @field_validator("heads", "ffn", "hidden")
    @classmethod
    def _ratios(cls, value, info):
        return _fraction(info.field_name, value)

    @model_validator(mode="after")
    def _something_to_do(self):
        if self.heads == 0 and self.ffn == 0 and self.hidden == 0 and not self.layers:
            raise ValueError("nothing to prune: set heads, ffn and/or hidden to a fraction in (0, 1), or give layers")
        return self

    def check_against(self, model_config: Any, task: str) -> None:
        """Layer numbers exist, the family is supported, and no layer loses all its heads."""
        if model_config is None:
            return
        if family_of_type(getattr(model_config, "model_type", None)) is None:
            raise ValueError(f"prune supports model types {supported_types()}, not '{model_config.model_type}'")
        structure = family_of_type(model_config.model_type)
        coupled = heads_with_hidden_reason(model_config.model_type)
        overridden = any(o.heads is not None for o in self.layers.values())
        if structure != "llama" and self.hidden > 0 and (self.heads > 0 or overridden):
            raise ValueError(f"heads: with hidden > 0 a {model_config.model_type} model keeps hidden width / head size "
                             "heads in every layer (its config ties the two); leave heads at 0")
        if coupled and overridden:
            raise ValueError(f"layers: {model_config.model_type} heads go together with hidden width, the same number "
                             f"in every layer ({coupled}); use heads or hidden, not per-layer heads")
        if ((coupled and self.heads > 0) or self.hidden > 0) and getattr(model_config, "new_decoder_architecture", False):
            raise ValueError("heads/hidden: Falcon's new decoder architecture (grouped fused qkv) cannot lose heads or "
                             "hidden width here; prune ffn only")
        if coupled and self.heads > 0 and self.scope == "global":
            raise ValueError(f"scope: {model_config.model_type} heads go with hidden width, evenly; use scope: uniform")
        n_layers = model_config.num_hidden_layers
        for layer in self.layers:
            if not 0 <= layer < n_layers:
                raise ValueError(f"layers: layer {layer} does not exist (the model has layers 0..{n_layers - 1})")
        if self.queries_mode(model_config):
            return self._check_query_heads(model_config)
        for layer, units in enumerate(units_per_layer(model_config)):
            ratio = self.heads_for(layer)
            if isinstance(ratio, list):
                bad = [h for h in ratio if h >= units]
                if bad:
                    raise ValueError(f"layers.{layer}.heads: head {bad[0]} does not exist (the layer has heads 0..{units - 1})")
                if len(ratio) >= units:
                    raise ValueError(f"layers.{layer}.heads removes every head of layer {layer}; keep at least one")
            elif keep_count(units, ratio) < 1:
                raise ValueError(f"heads: {ratio} removes every head of layer {layer} (it has {units}); use a smaller ratio")

    def queries_mode(self, model_config) -> bool:
        return self.gqa == "queries" and family_of_type(model_config.model_type) == "llama"

    def _check_query_heads(self, model_config) -> None:
        """gqa: queries: every K/V group keeps the same number (at least one) of its query heads."""
        if self.scope == "global":
            raise ValueError("scope: global works with gqa: groups; use scope: uniform with gqa: queries")
        heads = model_config.num_attention_heads
        kv = getattr(model_config, "num_key_value_heads", None) or heads
        for layer in range(model_config.num_hidden_layers):
            value = self.heads_for(layer)
            if isinstance(value, list):
                bad = [h for h in value if h >= heads]
                if bad:
                    raise ValueError(f"layers.{layer}.heads: query head {bad[0]} does not exist (0..{heads - 1})")
                per_group = [sum(1 for h in value if h // (heads // kv) == g) for g in range(kv)]
                if len(set(per_group)) > 1:
                    raise ValueError(f"layers.{layer}.heads must remove as many query heads from every K/V group "
                                     f"(groups of {heads // kv}); it removes {per_group}")
                if per_group[0] >= heads // kv:
                    raise ValueError(f"layers.{layer}.heads removes every head of layer {layer}; keep at least one per group")
            elif keep_count(heads // kv, value) < 1:
                raise ValueError(f"heads: {value} removes every head of layer {layer} (each K/V group has "
                                 f"{heads // kv} query heads); use a smaller ratio")

    def heads_for(self, layer: int) -> float | list[int]:
        override = self.layers.get(layer)
        return override.heads if override is not None and override.heads is not None else self.heads

    def ffn_for(self, layer: int) -> float:
        override = self.layers.get(layer)
        return override.ffn if override is not None and override.ffn is not None else self.ffn


def units_per_layer(config) -> list[int]:
    """Head-pruning units in each layer: heads (BERT, less those already pruned) or K/V groups (Llama)."""
    n_layers = config.num_hidden_layers
    if family_of_type(config.model_type) == "llama":
        return [getattr(config, "num_key_value_heads", None) or config.num_attention_heads] * n_layers
    pruned = getattr(config, "pruned_heads", None) or {}
    return [config.num_attention_heads - len(pruned.get(i, ())) for i in range(n_layers)]


def keep_count(n: int, ratio: float, round_to: int = 1) -> int:
    """How many of ``n`` units to keep when removing ``ratio`` of them, rounded up to ``round_to``."""
    keep = n - int(math.floor(n * ratio + 0.5))
    if round_to > 1 and keep > 0:
        keep = min(n, int(math.ceil(keep / round_to) * round_to))
    return keep


register_stage("prune", config=PruneConfig, function="edgeslim.compress.prune:run", consumes="torch",
               produces="torch", trains=True, before={"lowrank": "prune cannot cut a low-rank factorized model"})
