"""Runs a recipe's stages in order, with a content-hashed cache, resume and atomic stage outputs.

A stage is a pydantic config class plus one function ``run(config, artifact, ctx) -> Artifact``,
registered with :func:`register_stage` under its recipe name. The pipeline keys each stage's output
by a hash of (stage name, config, input artifact's key, data, edgeslim code) and skips a stage whose
output folder already holds a finished artifact with that key, so a second run redoes nothing and an
interrupted run resumes at the stage it was in.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict

from edgeslim.artifacts import Artifact, MANIFEST, atomic_dir, hash_bytes, read_json, write_manifest
from edgeslim.errors import EdgeslimError


class StageConfig(BaseModel):
    """Base of every stage's typed config: unknown keys are errors, values are validated on load."""

    model_config = ConfigDict(extra="forbid")

    def check_against(self, model_config: Any, task: str) -> None:
        """Check values that depend on the teacher (layer indices, vocabulary size, ...).

        Called by ``edgeslim check`` and before a run with the teacher's ``PretrainedConfig`` (or
        ``None`` when the teacher is built later). Raise ``ValueError`` with a one-line message.
        """


@dataclass(frozen=True)
class StageSpec:
    """A registered stage: its recipe name, config class, function and artifact kinds."""

    name: str
    config: type[StageConfig]
    run: Callable[[StageConfig, Artifact, "StageContext"], Artifact]
    consumes: str
    produces: str


STAGES: dict[str, StageSpec] = {}


def register_stage(name: str, config: type[StageConfig], consumes: str, produces: str):
    """Decorator that registers ``run(config, artifact, ctx) -> Artifact`` as stage ``name``."""

    def decorate(func):
        STAGES[name] = StageSpec(name, config, func, consumes, produces)
        return func

    return decorate


def load_stage_modules() -> None:
    """Import the modules that register stages, so the registry is complete."""
    import edgeslim.stages  # noqa: F401  (the import registers every built-in stage)


def get_stage(name: str) -> StageSpec:
    load_stage_modules()
    if name not in STAGES:
        known = ", ".join(sorted(STAGES))
        raise EdgeslimError(f"unknown stage '{name}'; known stages: {known}")
    return STAGES[name]


@dataclass
class StageContext:
    """What a stage may use besides its config and input artifact.

    ``out_dir`` is the (temporary) folder the stage writes its artifact into; ``teacher`` is the
    teacher's torch artifact (``None`` while the teacher stage itself runs); ``data`` is the
    recipe's :class:`edgeslim.data.DataBundle`.
    """

    out_dir: Path
    recipe: Any
    data: Any
    teacher: Artifact | None = None
    quiet: bool = False
    seed: int = 0
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.recipe.task

    def progress(self, total: int | None, desc: str, unit: str = "step"):
        """A progress bar with ETA (tqdm); silent under ``--quiet``."""
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, disable=self.quiet, leave=False, dynamic_ncols=True)

    def log(self, message: str) -> None:
        if not self.quiet:
            print(f"  {message}", flush=True)
