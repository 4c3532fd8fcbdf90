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
it for the teacher's INT8 (and, for LMs, INT4) baselines. The recipe keys are in
:mod:`edgeslim.quantize.config`, the specs and the quantizers in :mod:`edgeslim.quantize.specs`; the choice among candidates in :mod:`edgeslim.quantize.select`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from edgeslim.artifacts import ONNX_FILE, Artifact, copy_sidecar_files
from edgeslim.errors import EdgeslimError
from edgeslim.quantize.select import select
from edgeslim.quantize.config import PlainQuantizeConfig, QuantizeConfig
from edgeslim.quantize.specs import for_devices
from edgeslim.stage import StageContext


def place_model(src: Path, dst: Path) -> None:
    """Put the chosen ONNX file at ``dst``; a model with external data is re-saved so it points at
    ``<dst name>.data`` instead of the candidate's file name."""
    if not any(src.parent.glob(src.name + ".data")) and not any(src.parent.glob(src.name + "_data")):
        shutil.copy2(src, dst)
        return
    import onnx

    model = onnx.load(str(src), load_external_data=True)
    onnx.save_model(model, str(dst), save_as_external_data=True, location=dst.name + ".data")


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


def run_plain(config: PlainQuantizeConfig, artifact: Artifact, ctx: StageContext) -> Artifact:
    """Quantize ``artifact`` exactly as ``config`` says (the teacher's INT8 and INT4 baselines), with
    ``reduce_range`` decided for the recipe's devices when unset."""
    spec = for_devices(config.the_spec(), getattr(ctx.recipe, "devices", None))
    copy_sidecar_files(artifact.path, ctx.out_dir)
    spec.quantize(artifact.onnx_path, Path(ctx.out_dir) / ONNX_FILE)
    return Artifact(Path(ctx.out_dir), "onnx", {"quantization": spec.model_dump(mode="json", exclude_none=True)})
