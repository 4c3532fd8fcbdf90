"""The recipe's ``search`` section: which stage keys a hardware-aware search varies, and how long.

Torch-free, like every recipe section, so ``edgeslim check`` validates a search without importing
torch or Optuna. A search space names stage keys by ``STAGE.KEY`` (dots go deeper:
``prune.recovery.steps``) and gives each the values to try; ``STAGE.skip: [false, true]`` tries the
recipe with and without that stage. A trial is the recipe with one value per key
(:func:`trial_stages`); every value is checked against the stage's own config when the recipe
loads, so a search never fails on a typo an hour in.

    search:
      trials: 12
      space:
        distill.layers: [{every: 2}, {every: 3}, {every: 6}]
        prune.ffn: [0.25, 0.5]
        prune.skip: [false, true]
        quantize.candidates: [[{mode: dynamic}], [{mode: static}]]
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SKIP = "skip"


class SearchConfig(BaseModel):
    """What a search varies (``space``) and its limits; objectives are the task's quality (accuracy,
    or perplexity for causal LMs) and p50 latency on each of the recipe's devices."""

    model_config = ConfigDict(extra="forbid")

    space: dict[str, list[Any]]
    trials: int = Field(12, ge=1, description="trials in the study, over all workers")
    timeout_minutes: float | None = Field(None, gt=0, description="a worker starts no trial after this")
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    measure_front: bool = Field(True, description="measure the predicted Pareto front on each device")

    @field_validator("space")
    @classmethod
    def _keys_and_choices(cls, space: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not space:
            raise ValueError("space is empty; name at least one STAGE.KEY with the values to try")
        for key, choices in space.items():
            stage, _, path = key.partition(".")
            if not stage or not path or "" in path.split("."):
                raise ValueError(f"space key '{key}' must be STAGE.KEY (e.g. prune.ffn, distill.layers, prune.skip)")
            if not isinstance(choices, list) or len(choices) < 1:
                raise ValueError(f"space.{key} must be a non-empty list of values to try")
            if path == SKIP and any(not isinstance(c, bool) for c in choices):
                raise ValueError(f"space.{key}: skip takes true/false values")
        return space


def split_key(key: str) -> tuple[str, list[str]]:
    """``prune.recovery.steps`` -> ("prune", ["recovery", "steps"])."""
    stage, _, path = key.partition(".")
    return stage, path.split(".")


def trial_stages(stages: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
    """The recipe's stages (``[{name: config}]`` as dumped) with ``params`` (``STAGE.KEY -> value``)
    applied: each value set at its key path, stages whose ``STAGE.skip`` is true left out."""
    trial = copy.deepcopy(stages)
    skipped = set()
    for key, value in params.items():
        name, path = split_key(key)
        entry = next(e for e in trial if name in e)
        if path == [SKIP]:
            if value:
                skipped.add(name)
            continue
        node = entry[name]
        for part in path[:-1]:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ValueError(f"search key '{key}': '{part}' is not a mapping in stage {name}")
        node[path[-1]] = copy.deepcopy(value)
    return [e for e in trial if next(iter(e)) not in skipped]


def check_space(search: SearchConfig, stages: list[dict[str, Any]], validate) -> None:
    """Every key names a stage the recipe has (once), and every value makes a valid stage config:
    ``validate(name, config)`` raises ``ValueError`` for an invalid one."""
    names = [next(iter(e)) for e in stages]
    for key, choices in search.space.items():
        name, path = split_key(key)
        if names.count(name) != 1:
            where = "is not in the recipe's stages" if name not in names else "appears more than once in the stages"
            raise ValueError(f"space key '{key}': stage '{name}' {where} ({', '.join(names) or 'none'})")
        if path == [SKIP]:
            continue
        for index, value in enumerate(choices):
            config = next(iter(trial_stages(stages, {key: value})[names.index(name)].values()))
            try:
                validate(name, config)
            except ValueError as exc:
                raise ValueError(f"space.{key}[{index}] = {value!r}: {exc}") from None
