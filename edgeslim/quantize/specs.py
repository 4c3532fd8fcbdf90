"""The ways to quantize a model: one pydantic config per mode, each knowing its label, the operators
whose weights it turns into integers, and how to apply itself.

``mode`` picks the class (a discriminated union, :data:`QuantSpec`): ``dynamic`` (INT8 weights,
activations quantized at run time), ``static`` (INT8 with activation ranges calibrated on
``calibration_samples`` training examples), ``weight_only`` (onnxruntime ``MatMulNBits``, INT4 or
INT8 weights) and ``neural_compressor`` (weight-only RTN, GPTQ or AWQ on the torch model, written to
ONNX as ``MatMulNBits``). Recipes write the keys flat (``mode: weight_only``, ``bits: 4``); a value no
quantizer accepts, or a key of another mode, is refused with one line saying what to change.
This is "the INT8 and INT4 code": each class's :meth:`quantize` calls :mod:`edgeslim.quantize.ort`
(onnxruntime) or :mod:`edgeslim.quantize.inc` (neural-compressor).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter

from edgeslim.errors import EdgeslimError
from edgeslim.targets import isa

MODES = ("dynamic", "static", "weight_only", "neural_compressor")
ALGORITHMS = {"weight_only": ("rtn", "hqq", "offset"), "neural_compressor": ("rtn", "gptq", "awq")}
FORMATS = ("qdq", "qoperator")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
EMBEDDING_OPS = ("Gather", "EmbedLayerNormalization")


class SpecBase(BaseModel):
    """What every mode has: a name, nodes left in float, whether embedding tables are quantized."""

    model_config = ConfigDict(extra="forbid")
    #: operator types whose weights this mode turns into integers (the units of sensitivity and exclusion)
    WEIGHT_OPS: ClassVar[tuple[str, ...]] = ()
    #: whether the mode quantizes embedding tables unless told otherwise
    EMBEDDINGS_BY_DEFAULT: ClassVar[bool] = False

    name: str | None = Field(None, description="label of this candidate in the manifest and report")
    quantize_embeddings: bool | None = Field(None, description="default: yes for INT8 modes, no for weight-only")
    nodes_to_exclude: list[str] = Field(default_factory=list)

    @property
    def embeddings(self) -> bool:
        return self.EMBEDDINGS_BY_DEFAULT if self.quantize_embeddings is None else self.quantize_embeddings

    @property
    def needs_calibration(self) -> bool:
        return False

    def weight_ops(self) -> tuple[str, ...]:
        """The operator types this candidate quantizes (embeddings only when it quantizes them)."""
        return self.WEIGHT_OPS if self.embeddings else tuple(op for op in self.WEIGHT_OPS if op not in EMBEDDING_OPS)

    def label(self) -> str:
        """A short readable name: ``dynamic-int8-pc``, ``static-qdq-entropy``, ``weight_only-rtn-int4-b32``
        (``rr`` only where the recipe asks for reduce_range, so names do not change with the host)."""
        if self.name:
            return self.name
        parts = self._label_parts()
        if self.embeddings != self.EMBEDDINGS_BY_DEFAULT:
            parts.append("emb" if self.embeddings else "noemb")
        if self.nodes_to_exclude:
            parts.append(f"excl{len(self.nodes_to_exclude)}")
        return "-".join(parts)

    def _label_parts(self) -> list[str]:
        raise NotImplementedError

    def quantize(self, src: Path, dst: Path, *, calibration: list[dict] | None = None, torch_dir: Path | None = None,
                 extra_exclude: list[str] | None = None, evaluate=None, tolerable_loss: float = 0.01) -> Path:
        """Quantize ``src`` into ``dst`` (``extra_exclude`` adds float nodes; ``evaluate`` and
        ``tolerable_loss`` drive neural-compressor's autotune)."""
        raise NotImplementedError

    def _excluded(self, extra: list[str] | None) -> list[str]:
        return list(self.nodes_to_exclude) + list(extra or [])

    def _calibration(self, calibration: list[dict] | None) -> list[dict]:
        if not calibration:
            raise EdgeslimError(f"candidate {self.label()} needs calibration data, but the recipe's train split is empty")
        return calibration


class Int8Spec(SpecBase):
    """The INT8 modes' shared keys: per-channel weight scales and 7-bit weights."""

    EMBEDDINGS_BY_DEFAULT: ClassVar[bool] = True
    bits: Literal[8] | None = Field(None, description="INT8 only")
    per_channel: bool = False
    reduce_range: bool | None = Field(None, description="7-bit INT8 weights; default: where a device's u8s8 "
                                                          "kernels saturate (x86 without VNNI)")

    @property
    def resolved_bits(self) -> int:
        return 8

    @property
    def resolved_reduce_range(self) -> bool:
        """``reduce_range``, or what this CPU needs when the recipe leaves it unset."""
        return isa.resolve_reduce_range(self.reduce_range)


class DynamicSpec(Int8Spec):
    """Dynamic INT8: weights INT8, activations quantized at run time (no calibration)."""

    WEIGHT_OPS: ClassVar[tuple[str, ...]] = ("MatMul", "Gemm", "Attention", "Gather", "EmbedLayerNormalization")
    mode: Literal["dynamic"] = "dynamic"

    def _label_parts(self) -> list[str]:
        return ["dynamic", "int8"] + (["pc"] if self.per_channel else []) + (["rr"] if self.reduce_range else [])

    def quantize(self, src, dst, *, calibration=None, torch_dir=None, extra_exclude=None, evaluate=None,
                 tolerable_loss=0.01) -> Path:
        from edgeslim.quantize import ort

        return ort.quantize_dynamic(src, dst, per_channel=self.per_channel, reduce_range=self.resolved_reduce_range,
                                    nodes_to_exclude=self._excluded(extra_exclude),
                                    op_types=ort.dynamic_op_types(self.embeddings))


class StaticSpec(Int8Spec):
    """Static INT8: activation ranges calibrated on training examples (QDQ or QOperator)."""

    WEIGHT_OPS: ClassVar[tuple[str, ...]] = ("MatMul", "Gemm", "Gather")
    mode: Literal["static"] = "static"
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    format: Literal["qdq", "qoperator"] = "qdq"
    calibration_samples: int = Field(64, ge=1)

    @property
    def needs_calibration(self) -> bool:
        return True

    def _label_parts(self) -> list[str]:
        return ["static", self.format, self.calibration] + (["pc"] if self.per_channel else [])

    def quantize(self, src, dst, *, calibration=None, torch_dir=None, extra_exclude=None, evaluate=None,
                 tolerable_loss=0.01) -> Path:
        from edgeslim.quantize import ort

        return ort.quantize_static(src, dst, self._calibration(calibration), method=self.calibration,
                                   quant_format=self.format, per_channel=self.per_channel,
                                   reduce_range=self.resolved_reduce_range, quantize_embeddings=self.embeddings,
                                   nodes_to_exclude=self._excluded(extra_exclude))


class BlockSpec(SpecBase):
    """The weight-only modes' shared keys: bits, block size, symmetry, the kernel's accuracy level."""

    WEIGHT_OPS: ClassVar[tuple[str, ...]] = ("MatMul", "Gather")
    bits: Literal[4, 8] = 4
    block_size: int = 32
    symmetric: bool = False
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = None

    @property
    def resolved_bits(self) -> int:
        return self.bits

    def _label_parts(self) -> list[str]:
        algorithm = "autotune" if getattr(self, "autotune", False) else self.algorithm
        return [self.mode, algorithm, f"int{self.bits}", f"b{self.block_size}"] + (["sym"] if self.symmetric else [])


class WeightOnlySpec(BlockSpec):
    """onnxruntime weight-only ``MatMulNBits`` (RTN, HQQ, or INT4 with float block offsets on the fast
    symmetric kernel): "the INT4 code" for ONNX models."""

    mode: Literal["weight_only"] = "weight_only"
    algorithm: Literal["rtn", "hqq", "offset"] = "rtn"

    def quantize(self, src, dst, *, calibration=None, torch_dir=None, extra_exclude=None, evaluate=None,
                 tolerable_loss=0.01) -> Path:
        from edgeslim.quantize import ort

        return ort.quantize_weight_only(src, dst, bits=self.bits, algorithm=self.algorithm, block_size=self.block_size,
                                        symmetric=self.symmetric, accuracy_level=self.accuracy_level,
                                        quantize_embeddings=self.embeddings,
                                        nodes_to_exclude=self._excluded(extra_exclude))


class NeuralCompressorSpec(BlockSpec):
    """neural-compressor weight-only RTN, GPTQ or AWQ on the torch model, written as ``MatMulNBits``."""

    mode: Literal["neural_compressor"] = "neural_compressor"
    algorithm: Literal["rtn", "gptq", "awq"] = "rtn"
    autotune: bool = Field(False, description="let its autotune try rtn then gptq (then awq for causal LMs) "
                                              "until the accuracy loss is tolerable")
    calibration_samples: int = Field(64, ge=1)

    @property
    def needs_calibration(self) -> bool:
        return self.algorithm in ("gptq", "awq") or self.autotune

    def quantize(self, src, dst, *, calibration=None, torch_dir=None, extra_exclude=None, evaluate=None,
                 tolerable_loss=0.01) -> Path:
        from edgeslim.quantize import inc

        return inc.quantize_neural_compressor(self, src, dst, torch_dir=torch_dir,
                                              calibration=self._calibration(calibration) if self.needs_calibration else None,
                                              evaluate=evaluate, tolerable_loss=tolerable_loss)


SPEC_CLASSES: dict[str, type[SpecBase]] = {"dynamic": DynamicSpec, "static": StaticSpec,
                                           "weight_only": WeightOnlySpec, "neural_compressor": NeuralCompressorSpec}


def precheck(data: Any) -> Any:
    """Before the union validates: the mode defaults to dynamic, and values no quantizer accepts (or
    keys of another mode) are refused with a line that says what to change, not pydantic's generic
    "Input should be ..." for the wrong class."""
    if isinstance(data, SpecBase) or not isinstance(data, dict):
        return data
    data = {"mode": "dynamic", **data}
    mode, get = data["mode"], data.get
    if mode not in MODES:
        raise ValueError(f"unknown mode '{mode}'; choose one of {', '.join(MODES)}")
    bits = get("bits")
    if bits is not None and bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, not {bits}")
    if mode in ("dynamic", "static") and bits not in (None, 8):
        raise ValueError(f"mode '{mode}' is INT8 only; use mode weight_only for {bits} bits")
    if get("calibration", "minmax") not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method '{get('calibration')}'; choose minmax, entropy or percentile")
    if get("format", "qdq") not in FORMATS:
        raise ValueError(f"unknown format '{get('format')}'; choose qdq or qoperator")
    if isinstance(get("calibration_samples"), int) and get("calibration_samples") < 1:
        raise ValueError("calibration_samples must be at least 1 (the calibration set cannot be empty)")
    algorithm = get("algorithm", "rtn")
    if mode == "weight_only" and algorithm == "gptq":
        raise ValueError("onnxruntime's gptq does not work with this stack (it writes RTN's weights and breaks "
                         "fused graphs); use mode: neural_compressor with algorithm: gptq")
    if mode in ALGORITHMS and algorithm not in ALGORITHMS[mode]:
        raise ValueError(f"unknown algorithm '{algorithm}' for mode {mode}; choose {', '.join(ALGORITHMS[mode])}")
    block = get("block_size", 32)
    if isinstance(block, int) and (block < 16 or block & (block - 1)):
        raise ValueError(f"block_size must be a power of two >= 16, not {block}")
    if get("accuracy_level") not in (None, 0, 1, 2, 3, 4):
        raise ValueError(f"accuracy_level must be 0, 1, 2, 3 or 4, not {get('accuracy_level')}")
    if mode == "weight_only" and algorithm in ("hqq", "offset") and get("symmetric"):
        raise ValueError(f"{algorithm} is asymmetric only; set symmetric: false or use algorithm rtn")
    if mode == "weight_only" and algorithm == "offset" and get("bits", 4) != 4:
        raise ValueError("offset writes 4-bit weights; set bits: 4")
    if get("autotune") and mode != "neural_compressor":
        raise ValueError("autotune is neural-compressor's; set mode: neural_compressor or drop autotune")
    if mode == "neural_compressor" and get("nodes_to_exclude"):
        raise ValueError("mode neural_compressor cannot leave ONNX nodes in float; drop nodes_to_exclude")
    foreign = sorted(set(data) - set(SPEC_CLASSES[mode].model_fields))
    if foreign:
        owners = [m for m, cls in SPEC_CLASSES.items() if foreign[0] in cls.model_fields]
        where = f"a key of mode {' / '.join(owners)}" if owners else "not a quantization key"
        raise ValueError(f"'{foreign[0]}' is {where}, not of mode {mode}; drop it or change the mode")
    return data


#: One way to quantize a model: the mode's own config class, chosen by ``mode``.
QuantSpec = Annotated[Union[DynamicSpec, StaticSpec, WeightOnlySpec, NeuralCompressorSpec],
                      Field(discriminator="mode"), BeforeValidator(precheck)]
SPEC_KEYS = sorted({key for cls in SPEC_CLASSES.values() for key in cls.model_fields})
_ADAPTER: TypeAdapter = TypeAdapter(QuantSpec)


def make_spec(**keys: Any) -> SpecBase:
    """The spec the flat ``keys`` describe (``mode`` defaults to dynamic); ``ValueError`` with one
    line when they describe none."""
    return _ADAPTER.validate_python(keys)


def quantize_with(spec: SpecBase, src: Path, dst: Path, **options: Any) -> Path:
    """Quantize ``src`` into ``dst`` as ``spec`` says (see :meth:`SpecBase.quantize` for ``options``)."""
    return spec.quantize(src, dst, **options)


def quantize_dynamic_int8(src_onnx: Path, dst_onnx: Path, devices: list[str] | None = None) -> Path:
    """Plain dynamic INT8 of ``src_onnx`` written to ``dst_onnx`` (the always-present baseline), with
    7-bit weights where one of ``devices`` (or, with none, this host) would saturate u8s8 kernels."""
    src_onnx = Path(src_onnx)
    if not src_onnx.is_file():
        raise EdgeslimError(f"no ONNX model at {src_onnx}; point to the export stage's model.onnx")
    from edgeslim.quantize import ort

    return ort.quantize_dynamic(src_onnx, dst_onnx, reduce_range=reduce_range_default(devices))


def reduce_range_default(devices: list[str] | None) -> bool:
    """``reduce_range`` for INT8 meant for ``devices`` (profile names or files; see
    :func:`edgeslim.targets.isa.reduce_range_for`)."""
    from edgeslim.targets.profile import load_profile

    return isa.reduce_range_for([load_profile(name) for name in devices or []])


def for_devices(spec: SpecBase, devices: list[str] | None) -> SpecBase:
    """``spec`` with its ``reduce_range`` decided for the recipe's devices when the recipe left it unset."""
    if not isinstance(spec, Int8Spec) or spec.reduce_range is not None:
        return spec
    # the name stays the one the recipe's keys give (the same on every host); the config shows the choice
    return spec.model_copy(update={"reduce_range": reduce_range_default(devices), "name": spec.label()})
