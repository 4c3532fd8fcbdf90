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
:mod:`edgeslim.export.quantize_spec`; the choice among candidates in
:mod:`edgeslim.export.quantize_select`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import Field

from edgeslim.artifacts import ONNX_FILE, Artifact, copy_sidecar_files
from edgeslim.errors import EdgeslimError
from edgeslim.export.quantize_select import select
from edgeslim.export.quantize_spec import (  # noqa: F401  (the stage's public names, importable from here)
    ALGORITHMS, FORMATS, MODES, QuantSpec, check_spec, for_devices, place_model, quantize_dynamic_int8, quantize_with,
    reduce_range_default, torch_source)
from edgeslim.stage import StageConfig, StageContext, register_stage


class QuantizeConfig(StageConfig, QuantSpec):
    """Recipe keys of the ``quantize`` stage.

    The keys of :class:`QuantSpec` describe the single candidate used when ``candidates`` is empty.
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

    def specs(self) -> list[QuantSpec]:
        """The candidates to try: the listed ones, or the single one the top-level keys describe."""
        if self.candidates:
            return list(self.candidates)
        fields = {k: getattr(self, k) for k in QuantSpec.model_fields}
        return [QuantSpec(**fields)]


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


class PlainQuantizeConfig(StageConfig, QuantSpec):
    """One way to quantize (the keys of :class:`QuantSpec`), applied as given: no scoring, no choice."""


@register_stage("plain-quantize", config=PlainQuantizeConfig, consumes="onnx", produces="onnx")
def run_plain(config: PlainQuantizeConfig, artifact: Artifact, ctx: StageContext) -> Artifact:
    """Quantize ``artifact`` exactly as ``config`` says (the teacher's INT8 and INT4 baselines), with
    ``reduce_range`` decided for the recipe's devices when unset."""
    spec = for_devices(QuantSpec(**{key: getattr(config, key) for key in QuantSpec.model_fields}),
                       getattr(ctx.recipe, "devices", None))
    copy_sidecar_files(artifact.path, ctx.out_dir)
    quantize_with(spec, artifact.onnx_path, Path(ctx.out_dir) / ONNX_FILE)
    return Artifact(Path(ctx.out_dir), "onnx", {"quantization": spec.model_dump(mode="json", exclude_none=True)})
