"""The ``quantize`` stage: an ONNX model in, the fastest quantized ONNX model within budget out.

The stage tries one or more quantization *candidates* (dynamic or static INT8, INT4/INT8
weight-only ``MatMulNBits``, neural-compressor weight-only on the torch model), measures each on
the recipe's eval split (accuracy, size, interleaved single-thread latency) and keeps the fastest
whose accuracy drop stays within the budget. When none does, per-node sensitivity (the output error
each quantized node adds on its own) ranks the nodes, and the most sensitive are left in float one
by one until the budget holds; if it still does not, the most accurate candidate is saved anyway and
the manifest says by how much it misses. ``manifest["candidates"]`` lists every candidate tried and
``manifest["choice"]`` says which was kept and why.

The output folder has the input's layout: ``model.onnx`` plus every other file of the input folder
(``config.json``, tokenizer files, generation config) copied unchanged.

The ``plain-quantize`` stage applies one spec as given (no scoring, no choice): the pipeline runs
it for the teacher's INT8 (and, for LMs, INT4) baselines. The specs and the quantizers are in
:mod:`edgeslim.quantize.specs`; the choice among candidates in :mod:`edgeslim.quantize.select`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from edgeslim.artifacts import ONNX_FILE, Artifact, copy_sidecar_files
from edgeslim.errors import EdgeslimError
from edgeslim.quantize.select import select
from edgeslim.quantize.specs import (  # noqa: F401  (the stage's public names, importable from here)
    MODES, SPEC_KEYS, QuantSpec, SpecBase, for_devices, make_spec, quantize_dynamic_int8, quantize_with)
from edgeslim.stage import StageConfig, StageContext, register_stage


class SpecKeys(StageConfig):
    """A stage config whose recipe keys may also describe one candidate flat (``mode: weight_only``,
    ``bits: 4``): those keys are gathered into ``spec`` before validation."""

    spec: QuantSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _gather_spec_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        own = set(cls.model_fields) - {"spec"}
        flat = {key: value for key, value in data.items() if key in SPEC_KEYS and key not in own}
        if not flat:
            return data
        return {**{k: v for k, v in data.items() if k not in flat}, "spec": flat}

    @classmethod
    def error_location(cls, loc: tuple) -> tuple:
        """Where a recipe error is: the flat key, not the internal ``spec`` field or the mode's tag."""
        return tuple(part for part in loc if part != "spec" and part not in MODES)

    def the_spec(self) -> SpecBase:
        return self.spec if self.spec is not None else make_spec()


class QuantizeConfig(SpecKeys):
    """Recipe keys of the ``quantize`` stage.

    The keys of a spec (:mod:`edgeslim.quantize.specs`) describe the single candidate used when
    ``candidates`` is empty.
    ``max_accuracy_drop`` (absolute, e.g. 0.01, counted from the input model's accuracy) overrides the
    recipe's ``budgets.accuracy_drop`` (counted from the teacher's eval accuracy when known);
    ``exclude_sensitive`` lets the stage leave up to ``max_excluded_nodes`` of the most sensitive
    nodes in float to meet it. ``eval_limit`` eval examples (default: all) measure accuracy, ``sensitivity_samples``
    measure per-node error, and ``latency_runs`` interleaved runs per model measure latency.
    """

    candidates: list[QuantSpec] = Field(default_factory=list)
    max_accuracy_drop: float | None = Field(None, ge=0)
    exclude_sensitive: bool = True
    max_excluded_nodes: int = Field(8, ge=0)
    eval_limit: int | None = Field(None, ge=1)
    sensitivity_samples: int = Field(16, ge=1)
    latency_runs: int = Field(20, ge=1)

    def specs(self) -> list[SpecBase]:
        """The candidates to try: the listed ones, or the single one the flat keys describe."""
        return list(self.candidates) if self.candidates else [self.the_spec()]


def place_model(src: Path, dst: Path) -> None:
    """Put the chosen ONNX file at ``dst``; a model with external data is re-saved so it points at
    ``<dst name>.data`` instead of the candidate's file name."""
    if not any(src.parent.glob(src.name + ".data")) and not any(src.parent.glob(src.name + "_data")):
        shutil.copy2(src, dst)
        return
    import onnx

    model = onnx.load(str(src), load_external_data=True)
    onnx.save_model(model, str(dst), save_as_external_data=True, location=dst.name + ".data")


@register_stage("quantize", config=QuantizeConfig, consumes="onnx", produces="onnx")
def run(config: QuantizeConfig, artifact: Artifact, ctx: StageContext) -> Artifact:
    """Quantize ``artifact``'s ``model.onnx`` into ``ctx.out_dir``, choosing among the candidates."""
    src = artifact.onnx_path
    if not src.is_file():
        raise EdgeslimError(f"the quantize stage needs an ONNX artifact with {ONNX_FILE}; {artifact.path} has none")
    out_dir = Path(ctx.out_dir)
    with tempfile.TemporaryDirectory(prefix="edgeslim-quantize-") as tmp:
        outcome = select(config, artifact, ctx, Path(tmp))
        place_model(outcome.chosen_path, out_dir / ONNX_FILE)
    copy_sidecar_files(artifact.path, out_dir)
    return Artifact(out_dir, "onnx", outcome.manifest())


class PlainQuantizeConfig(SpecKeys):
    """One way to quantize (the flat keys of a spec), applied as given: no scoring, no choice."""


@register_stage("plain-quantize", config=PlainQuantizeConfig, consumes="onnx", produces="onnx")
def run_plain(config: PlainQuantizeConfig, artifact: Artifact, ctx: StageContext) -> Artifact:
    """Quantize ``artifact`` exactly as ``config`` says (the teacher's INT8 and INT4 baselines), with
    ``reduce_range`` decided for the recipe's devices when unset."""
    spec = for_devices(config.the_spec(), getattr(ctx.recipe, "devices", None))
    copy_sidecar_files(artifact.path, ctx.out_dir)
    spec.quantize(artifact.onnx_path, Path(ctx.out_dir) / ONNX_FILE)
    return Artifact(Path(ctx.out_dir), "onnx", {"quantization": spec.model_dump(mode="json", exclude_none=True)})
