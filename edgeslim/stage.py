"""The stage contract: what a stage is, how it registers, and what it is given when it runs.

A stage is a typed config (a :class:`StageConfig` subclass) plus one function
``run(config, artifact, ctx) -> Artifact``, registered with :func:`register_stage` under its recipe
name (the shape of torchao's config + transform and Olive's passes). The config lives in a module
that imports neither torch, transformers nor onnxruntime, and registers the function by its dotted
name ("module:function"), imported only when the stage runs: reading and checking a recipe stays
fast. This module is a leaf: stage modules import it and nothing that runs stages, so the stage
modules, the registry (:mod:`edgeslim.stages`) and the runner (:mod:`edgeslim.pipeline`) form no
import cycle.

Artifact kinds a stage consumes and produces: ``source`` (the recipe's teacher reference; only the
teacher stage consumes it), ``torch``, ``onnx``, ``bundle``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel, ConfigDict

from edgeslim.artifacts import Artifact

if TYPE_CHECKING:  # types only: the recipe and the data import stage modules' configs
    from edgeslim.data import DataBundle
    from edgeslim.recipe import Recipe

#: What flows between stages.
ARTIFACT_KINDS = ("source", "torch", "onnx", "bundle")


class StageConfig(BaseModel):
    """Base of every stage's typed config: unknown keys are errors, values are validated on load."""

    model_config = ConfigDict(extra="forbid")

    def check_against(self, model_config: Any, task: str) -> None:
        """Check values that depend on the teacher (layer indices, vocabulary size, ...).

        Called by ``edgeslim check`` and before a run with the teacher's ``PretrainedConfig`` (or
        ``None`` when the teacher is built later). Raise ``ValueError`` with a one-line message.
        """

    @classmethod
    def error_location(cls, loc: tuple) -> tuple:
        """The recipe key path of a validation error at ``loc`` (a config whose fields do not mirror
        its recipe keys one to one maps them back here)."""
        return loc


@dataclass(frozen=True)
class StageSpec:
    """A registered stage: its recipe name, config class, function ("module:function") and artifact kinds."""

    name: str
    config: type[StageConfig]
    function: str
    consumes: str
    produces: str
    trains: bool = False
    before: dict[str, str] = field(default_factory=dict)

    @property
    def module(self) -> str:
        """The module that implements the stage (its import closure is the stage's code version)."""
        return self.function.partition(":")[0]

    def run(self, config: StageConfig, artifact: Artifact | None, ctx: "StageContext") -> Artifact:
        """Import the stage's function and run it."""
        module, _, name = self.function.partition(":")
        func: Callable[[StageConfig, Artifact | None, StageContext], Artifact] = getattr(
            importlib.import_module(module), name)
        return func(config, artifact, ctx)


STAGES: dict[str, StageSpec] = {}


def register_stage(name: str, config: type[StageConfig], function: str, consumes: str, produces: str,
                   trains: bool = False, before: dict[str, str] | None = None) -> None:
    """Register stage ``name``: ``function`` ("module:function") is ``run(config, artifact, ctx) -> Artifact``.

    ``trains`` marks a stage that may call the data-parallel training loop: under ``accelerate
    launch`` every process runs it (the loop needs them all); other stages run on rank 0 only.
    ``before`` maps stages this one must come before (when both are in a recipe) to the reason.
    """
    if ":" not in function:
        raise ValueError(f"stage '{name}': function must be 'module:function', not '{function}'")
    STAGES[name] = StageSpec(name, config, function, consumes, produces, trains, dict(before or {}))


@dataclass
class StageContext:
    """What a stage may use besides its config and input artifact.

    ``out_dir`` is the (temporary) folder the stage writes its artifact into; ``teacher`` is the
    teacher's torch artifact (``None`` while the teacher stage itself runs); ``data`` is the
    recipe's :class:`edgeslim.data.DataBundle`. ``work_dir`` is a folder that survives a crash of
    the stage (for training checkpoints, so a rerun resumes); it is deleted once the stage finishes.
    """

    out_dir: Path
    recipe: "Recipe"
    data: "DataBundle"
    teacher: Artifact | None = None
    quiet: bool = False
    seed: int = 0
    work_dir: Path | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.recipe.task

    def progress(self, total: int | None, desc: str, unit: str = "step"):
        """A progress bar with ETA (tqdm); silent under ``--quiet``."""
        import sys

        from tqdm.auto import tqdm

        interactive = sys.stderr.isatty()
        return tqdm(total=total, desc=desc, unit=unit, disable=self.quiet, leave=False, dynamic_ncols=True,
                    mininterval=0.2 if interactive else 15.0)

    def log(self, message: str) -> None:
        if not self.quiet:
            print(f"  {message}", flush=True)
