"""The ``quantize`` stage: an ONNX model in, a smaller, faster quantized ONNX model out.

The output folder has the input's layout: ``model.onnx`` plus every other file of the input folder
(``config.json``, tokenizer files, generation config) copied unchanged, so later stages and Optimum
load it like the input. The stage manifest records the mode and the sizes before and after.

:func:`quantize_dynamic_int8` is the plain dynamic INT8 recipe the pipeline uses to build the
"teacher INT8" baseline that every report compares against.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from edgeslim.artifacts import ONNX_FILE, Artifact, MANIFEST, onnx_size_bytes
from edgeslim.errors import EdgeslimError
from edgeslim.export import quantize_ort
from edgeslim.pipeline import StageConfig, StageContext, register_stage


class QuantizeConfig(StageConfig):
    """Recipe keys of the ``quantize`` stage.

    ``mode``: ``dynamic`` = onnxruntime dynamic INT8 (weights int8, activations quantized at run time).
    ``per_channel``: one scale per output channel of each weight (more accurate, slightly larger).
    ``reduce_range``: 7-bit weights, which avoids saturation on CPUs without VNNI instructions.
    ``nodes_to_exclude``: ONNX node names left in float.
    """

    mode: Literal["dynamic"] = "dynamic"
    per_channel: bool = False
    reduce_range: bool = False
    nodes_to_exclude: list[str] = []


def quantize_dynamic_int8(src_onnx: Path, dst_onnx: Path) -> Path:
    """Plain dynamic INT8 of ``src_onnx`` written to ``dst_onnx`` (the always-present baseline)."""
    src_onnx = Path(src_onnx)
    if not src_onnx.is_file():
        raise EdgeslimError(f"no ONNX model at {src_onnx}; point to the export stage's model.onnx")
    return quantize_ort.quantize_dynamic(src_onnx, dst_onnx)


def copy_sidecar_files(src_dir: Path, dst_dir: Path) -> list[str]:
    """Copy everything but the ONNX model, its external data and the manifest; return the names."""
    skip = {MANIFEST, ONNX_FILE, ONNX_FILE + ".data", ONNX_FILE + "_data"}
    copied = []
    for item in sorted(Path(src_dir).iterdir()):
        if item.name in skip or item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, Path(dst_dir) / item.name)
        else:
            shutil.copy2(item, Path(dst_dir) / item.name)
        copied.append(item.name)
    return copied


@register_stage("quantize", config=QuantizeConfig, consumes="onnx", produces="onnx")
def run(config: QuantizeConfig, artifact: Artifact, ctx: StageContext) -> Artifact:
    """Quantize ``artifact``'s ``model.onnx`` into ``ctx.out_dir`` as the config says."""
    src = artifact.onnx_path
    if not src.is_file():
        raise EdgeslimError(f"the quantize stage needs an ONNX artifact with {ONNX_FILE}; {artifact.path} has none")
    out_dir = Path(ctx.out_dir)
    dst = out_dir / ONNX_FILE
    ctx.log(f"quantize: {config.mode} INT8 (per_channel={config.per_channel}, reduce_range={config.reduce_range})")
    quantize_ort.quantize_dynamic(
        src,
        dst,
        per_channel=config.per_channel,
        reduce_range=config.reduce_range,
        nodes_to_exclude=list(config.nodes_to_exclude),
    )
    copy_sidecar_files(artifact.path, out_dir)
    size_in, size_out = onnx_size_bytes(src), onnx_size_bytes(dst)
    metrics = {"size_bytes": size_out, "input_size_bytes": size_in, "size_ratio": size_out / size_in}
    return Artifact(out_dir, "onnx", {"metrics": metrics, "mode": config.mode})
