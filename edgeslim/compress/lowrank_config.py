"""The ``lowrank`` stage's recipe keys (see docs/compress.md) and its registration.

Torch-free, so ``edgeslim check`` reads and checks a recipe without importing torch; the stage itself
is :func:`edgeslim.compress.lowrank.run`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from edgeslim.families import family_of_type, supported_types
from edgeslim.compress.recovery_config import Recovery
from edgeslim.stage import StageConfig, register_stage

Target = Literal["ffn", "attention_output", "attention_qkv"]


class LowRankConfig(StageConfig):
    """Which Linears to factorize and how their ranks are chosen (exactly one of rank/energy/budget).

    ``targets`` name parts of the known families; ``modules`` name Linears by glob pattern, for any
    architecture. A recipe that gives ``modules`` and no ``targets`` factorizes only those modules.
    """

    targets: list[Target] = Field(default_factory=lambda: ["ffn"])
    modules: list[str] = Field(default_factory=list, description="extra Linear module names (glob patterns)")
    rank: int | None = Field(None, ge=1)
    energy: float | None = Field(None, gt=0, le=1)
    budget: float | None = Field(None, gt=0, lt=1)
    round_to: int = Field(1, ge=1)
    min_saving: float = Field(0.1, ge=0, lt=1, description="factorize only where FLOPs fall by at least this")
    recovery: Recovery = Recovery()

    @model_validator(mode="after")
    def _modules_alone(self):
        if self.modules and "targets" not in self.model_fields_set:
            self.targets = []
        return self

    @model_validator(mode="after")
    def _one_rule(self):
        given = [name for name in ("rank", "energy", "budget") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of rank (e.g. 64), energy (e.g. 0.9) or budget (e.g. 0.5)"
                             + (f", not {' and '.join(given)}" if given else ""))
        if not self.targets and not self.modules:
            raise ValueError("nothing to factorize: give targets (ffn, attention_output, attention_qkv) or modules")
        return self

    def check_against(self, model_config: Any, task: str) -> None:
        """A fixed rank must be smaller than every targeted matrix; named families must be known."""
        if model_config is None:
            return
        family = family_of_type(getattr(model_config, "model_type", None))
        if self.targets and family is None:
            raise ValueError(f"lowrank targets work for model types {supported_types()}; for "
                             f"'{model_config.model_type}' drop targets and list Linear names (glob patterns) under "
                             "modules, e.g. modules: ['*.intermediate.dense']")
        if self.rank is not None and family is not None and self.targets:
            smallest = min(_target_shapes(model_config, self.targets, family))
            if self.rank >= smallest:
                raise ValueError(f"rank {self.rank} is not smaller than the targeted matrices "
                                 f"(smallest side {smallest}); use a rank below {smallest}")


# The config fields that hold the FFN width, by architecture (GPT-2's n_inner: null means 4 x hidden).
FFN_WIDTH_KEYS = ("intermediate_size", "hidden_dim", "ffn_dim", "n_inner", "ffn_hidden_size")


def _target_shapes(config, targets: list[str], family: str) -> list[int]:
    """The smaller side of each targeted matrix, from the config (heads assumed unpruned)."""
    hidden = config.hidden_size
    inter = next((getattr(config, key) for key in FFN_WIDTH_KEYS if getattr(config, key, None)), 4 * hidden)
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    sides = []
    if "ffn" in targets:
        sides.append(min(hidden, inter))
    if "attention_output" in targets:
        sides.append(min(hidden, config.num_attention_heads * head_dim))
    if "attention_qkv" in targets:
        kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        sides.append(min(hidden, kv * head_dim))
    return sides


register_stage("lowrank", config=LowRankConfig, function="edgeslim.compress.lowrank:run", consumes="torch",
               produces="torch", trains=True)
