"""One way to quantize an ONNX model (:class:`QuantSpec`, a quantize candidate) and the call that
applies it (:func:`quantize_with`): onnxruntime dynamic and static INT8, INT4/INT8 weight-only
``MatMulNBits``, or neural-compressor on the torch model. This is "the INT4 code" and "the INT8 code":
the spec, its checks, and the dispatch to :mod:`edgeslim.export.quantize_ort` and
:mod:`edgeslim.export.quantize_inc`. The ``quantize`` stage (:mod:`edgeslim.export.quantize`) and
the baselines build on it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgeslim.artifacts import Artifact
from edgeslim.errors import EdgeslimError
from edgeslim.export import quantize_ort
from edgeslim.targets import isa

MODES = ("dynamic", "static", "weight_only", "neural_compressor")
ALGORITHMS = {"weight_only": ("rtn", "hqq"), "neural_compressor": ("rtn", "gptq", "awq")}
FORMATS = ("qdq", "qoperator")


class QuantSpec(BaseModel):
    """One way to quantize a model (a candidate). Every value is checked when the recipe loads.

    ``mode``: ``dynamic`` (INT8 weights, activations quantized at run time), ``static`` (INT8 with
    activation ranges calibrated on ``calibration_samples`` training examples by ``calibration``:
    minmax, entropy or percentile; ``format`` qdq or qoperator), ``weight_only`` (onnxruntime
    ``MatMulNBits``: ``algorithm`` rtn or hqq; ``bits`` 4 or 8; ``block_size``; ``symmetric``;
    ``accuracy_level``), ``neural_compressor`` (weight-only rtn, gptq or awq on the torch model,
    written to ONNX as ``MatMulNBits``). ``quantize_embeddings`` also quantizes the embedding
    tables (``Gather``). ``nodes_to_exclude`` are ONNX node names left in float.
    """

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="label of this candidate in the manifest and report")
    mode: str = "dynamic"
    bits: int | None = Field(None, description="8 for dynamic/static; 4 (default) or 8 for weight-only")
    per_channel: bool = False
    reduce_range: bool | None = Field(None, description="7-bit INT8 weights; default: where this CPU's u8s8 "
                                                          "kernels saturate (x86 without VNNI)")
    quantize_embeddings: bool | None = Field(None, description="default: yes for INT8 modes, no for weight-only")
    calibration: str = "minmax"
    format: str = "qdq"
    calibration_samples: int = 64
    algorithm: str = "rtn"
    block_size: int = 32
    symmetric: bool = False
    accuracy_level: int | None = None
    autotune: bool = Field(False, description="neural_compressor: let its autotune try rtn then gptq (then awq "
                                              "for causal LMs) until the accuracy loss is tolerable")
    nodes_to_exclude: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> "QuantSpec":
        check_spec(self)
        return self

    @property
    def resolved_bits(self) -> int:
        return self.bits if self.bits is not None else (8 if self.mode in ("dynamic", "static") else 4)

    @property
    def embeddings(self) -> bool:
        if self.quantize_embeddings is not None:
            return self.quantize_embeddings
        return self.mode in ("dynamic", "static")

    @property
    def resolved_reduce_range(self) -> bool:
        """``reduce_range``, or what this CPU needs when the recipe leaves it unset."""
        return isa.resolve_reduce_range(self.reduce_range)

    @property
    def needs_calibration(self) -> bool:
        return self.mode == "static" or (self.mode in ALGORITHMS and (self.algorithm in ("gptq", "awq") or self.autotune))

    def label(self) -> str:
        """A short readable name: ``dynamic-int8-pc``, ``static-qdq-entropy``, ``weight_only-rtn-int4-b32``
        (``rr`` only where the recipe asks for reduce_range, so names do not change with the host)."""
        if self.name:
            return self.name
        if self.mode == "dynamic":
            parts = ["dynamic", "int8"] + (["pc"] if self.per_channel else []) + (["rr"] if self.reduce_range else [])
        elif self.mode == "static":
            parts = ["static", self.format, self.calibration] + (["pc"] if self.per_channel else [])
        else:
            algorithm = "autotune" if self.autotune else self.algorithm
            parts = [self.mode, algorithm, f"int{self.resolved_bits}", f"b{self.block_size}"]
            parts += ["sym"] if self.symmetric else []
        if self.embeddings != (self.mode in ("dynamic", "static")):
            parts.append("emb" if self.embeddings else "noemb")
        if self.nodes_to_exclude:
            parts.append(f"excl{len(self.nodes_to_exclude)}")
        return "-".join(parts)


def check_spec(spec: QuantSpec) -> None:
    """Reject values no quantizer accepts, each with one line saying what to change."""
    if spec.mode not in MODES:
        raise ValueError(f"unknown mode '{spec.mode}'; choose one of {', '.join(MODES)}")
    if spec.bits is not None and spec.bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, not {spec.bits}")
    if spec.mode in ("dynamic", "static") and spec.resolved_bits != 8:
        raise ValueError(f"mode '{spec.mode}' is INT8 only; use mode weight_only for {spec.bits} bits")
    if spec.calibration not in quantize_ort.CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method '{spec.calibration}'; choose minmax, entropy or percentile")
    if spec.format not in FORMATS:
        raise ValueError(f"unknown format '{spec.format}'; choose qdq or qoperator")
    if spec.calibration_samples < 1:
        raise ValueError("calibration_samples must be at least 1 (the calibration set cannot be empty)")
    if spec.mode == "weight_only" and spec.algorithm == "gptq":
        raise ValueError("onnxruntime's gptq does not work with this stack (it writes RTN's weights and breaks "
                         "fused graphs); use mode: neural_compressor with algorithm: gptq")
    if spec.mode in ALGORITHMS and spec.algorithm not in ALGORITHMS[spec.mode]:
        choices = ", ".join(ALGORITHMS[spec.mode])
        raise ValueError(f"unknown algorithm '{spec.algorithm}' for mode {spec.mode}; choose {choices}")
    if spec.block_size < 16 or spec.block_size & (spec.block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, not {spec.block_size}")
    if spec.accuracy_level is not None and spec.accuracy_level not in (0, 1, 2, 3, 4):
        raise ValueError(f"accuracy_level must be 0, 1, 2, 3 or 4, not {spec.accuracy_level}")
    if spec.mode == "weight_only" and spec.algorithm == "hqq" and spec.symmetric:
        raise ValueError("hqq is asymmetric only; set symmetric: false or use algorithm rtn")
    if spec.mode == "weight_only" and spec.algorithm == "hqq" and spec.quantize_embeddings:
        raise ValueError(f"{spec.algorithm} quantizes MatMul weights only; set quantize_embeddings: false or use rtn")
    if spec.autotune and spec.mode != "neural_compressor":
        raise ValueError("autotune is neural-compressor's; set mode: neural_compressor or drop autotune")
    if spec.mode == "neural_compressor" and spec.nodes_to_exclude:
        raise ValueError("mode neural_compressor cannot leave ONNX nodes in float; drop nodes_to_exclude")


def quantize_dynamic_int8(src_onnx: Path, dst_onnx: Path, devices: list[str] | None = None) -> Path:
    """Plain dynamic INT8 of ``src_onnx`` written to ``dst_onnx`` (the always-present baseline), with
    7-bit weights where one of ``devices`` (or, with none, this host) would saturate u8s8 kernels."""
    src_onnx = Path(src_onnx)
    if not src_onnx.is_file():
        raise EdgeslimError(f"no ONNX model at {src_onnx}; point to the export stage's model.onnx")
    return quantize_ort.quantize_dynamic(src_onnx, dst_onnx, reduce_range=reduce_range_default(devices))


def reduce_range_default(devices: list[str] | None) -> bool:
    """``reduce_range`` for INT8 meant for ``devices`` (profile names or files; see
    :func:`edgeslim.targets.isa.reduce_range_for`)."""
    from edgeslim.targets.profile import load_profile

    return isa.reduce_range_for([load_profile(name) for name in devices or []])


def for_devices(spec: QuantSpec, devices: list[str] | None) -> QuantSpec:
    """``spec`` with its ``reduce_range`` decided for the recipe's devices when the recipe left it unset."""
    if spec.mode not in ("dynamic", "static") or spec.reduce_range is not None:
        return spec
    # the name stays the one the recipe's keys give (the same on every host); the config shows the choice
    return spec.model_copy(update={"reduce_range": reduce_range_default(devices), "name": spec.label()})


def quantize_with(spec: QuantSpec, src: Path, dst: Path, calibration: list[dict] | None = None,
                  torch_dir: Path | None = None, extra_exclude: list[str] | None = None,
                  evaluate=None, tolerable_loss: float = 0.01) -> Path:
    """Quantize ``src`` into ``dst`` as ``spec`` says (``extra_exclude`` adds float nodes).

    ``evaluate(torch_model) -> accuracy`` and ``tolerable_loss`` (relative) drive neural-compressor's
    autotune when ``spec.autotune`` is set.
    """
    exclude = list(spec.nodes_to_exclude) + list(extra_exclude or [])
    if spec.mode == "dynamic":
        return quantize_ort.quantize_dynamic(
            src, dst, per_channel=spec.per_channel, reduce_range=spec.resolved_reduce_range, nodes_to_exclude=exclude,
            op_types=quantize_ort.dynamic_op_types(spec.embeddings),
        )
    if spec.needs_calibration and not calibration:
        raise EdgeslimError(f"candidate {spec.label()} needs calibration data, but the recipe's train split is empty")
    if spec.mode == "static":
        return quantize_ort.quantize_static(
            src, dst, calibration, method=spec.calibration, quant_format=spec.format, per_channel=spec.per_channel,
            reduce_range=spec.resolved_reduce_range, quantize_embeddings=spec.embeddings, nodes_to_exclude=exclude,
        )
    if spec.mode == "weight_only":
        return quantize_ort.quantize_weight_only(
            src, dst, bits=spec.resolved_bits, algorithm=spec.algorithm, block_size=spec.block_size,
            symmetric=spec.symmetric, accuracy_level=spec.accuracy_level, quantize_embeddings=spec.embeddings,
            nodes_to_exclude=exclude,
        )
    from edgeslim.export import quantize_inc

    return quantize_inc.quantize_neural_compressor(spec, src, dst, torch_dir=torch_dir, calibration=calibration,
                                                   evaluate=evaluate, tolerable_loss=tolerable_loss)


def place_model(src: Path, dst: Path) -> None:
    """Put the chosen ONNX file at ``dst``; a model with external data is re-saved so it points at
    ``<dst name>.data`` instead of the candidate's file name."""
    if not any(src.parent.glob(src.name + ".data")) and not any(src.parent.glob(src.name + "_data")):
        shutil.copy2(src, dst)
        return
    import onnx

    model = onnx.load(str(src), load_external_data=True)
    onnx.save_model(model, str(dst), save_as_external_data=True, location=dst.name + ".data")


def torch_source(artifact: Artifact) -> Path | None:
    """The torch model folder the ONNX artifact was exported from (the pipeline records it)."""
    path = (artifact.manifest.get("input") or {}).get("path")
    return Path(path) if path and Path(path).is_dir() else None
