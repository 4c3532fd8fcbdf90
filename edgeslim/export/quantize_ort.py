"""onnxruntime quantization calls with the traps of this stack handled.

Exports from this stack trip the onnxruntime quantizer in three known ways; each is handled here,
in one place, so every quantization mode benefits:

* ``quant_pre_process`` (symbolic shape inference) fails with "Incomplete symbolic shape inference"
  on TorchScript and dynamo exports of transformers, so it is never called.
* dynamo exports carry ``graph.value_info`` entries whose shapes conflict with what ONNX shape
  inference derives again inside the quantizer ("Inferred shape and existing shape differ"); the
  entries are only hints, so they are cleared before quantizing.
* graphs fused by the onnxruntime transformer optimizer (O2: ``Attention``, ``SkipLayerNormalization``
  ...) hold contrib-op outputs that ONNX shape inference cannot type, so the quantizer cannot find the
  type of a MatMul input; ``DefaultTensorType`` tells it the model's float type.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx

class _NoPreprocessAdvice(logging.Filter):
    """Drops onnxruntime's "Please consider (to run) pre-processing" warning: pre-processing is skipped
    on purpose (see above), and the warning repeats once per quantizer call."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def quiet_quantizer():
    """Silence the quantizers' chatter (the advice above; calibrators' and GPTQ's progress prints),
    which would otherwise flood the run's log once per candidate and per sensitivity probe."""
    import io

    root = logging.getLogger()
    advice = _NoPreprocessAdvice()
    root.addFilter(advice)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(advice)


# Models above this size are written with external data (protobuf's limit is 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def load_for_quantization(src_onnx: Path) -> onnx.ModelProto:
    """Load an ONNX model (with external data) and drop the ``value_info`` hints dynamo exports leave."""
    model = onnx.load(str(src_onnx), load_external_data=True)
    del model.graph.value_info[:]
    return model


def float_type_of(model: onnx.ModelProto) -> int:
    """The model's float element type (of its first float output), FLOAT when it has none."""
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    for value in list(model.graph.output) + list(model.graph.input):
        elem = value.type.tensor_type.elem_type
        if elem in floats:
            return elem
    return onnx.TensorProto.FLOAT


def base_extra_options(model: onnx.ModelProto) -> dict:
    """Extra options every onnxruntime quantizer call gets (the fused-graph typing fix)."""
    return {"DefaultTensorType": float_type_of(model)}


def needs_external_data(model: onnx.ModelProto) -> bool:
    return model.ByteSize() > EXTERNAL_DATA_THRESHOLD


def save_onnx(model: onnx.ModelProto, path: Path) -> Path:
    """Save ``model`` at ``path``; above protobuf's limit the weights go to ``<name>.data`` beside it."""
    path = Path(path)
    if needs_external_data(model):
        onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save_model(model, str(path))
    return path


def staged_copy(model: onnx.ModelProto, folder: Path) -> Path:
    """Write ``model`` into ``folder`` as ``input.onnx`` so the quantizer reads a cleaned file."""
    return save_onnx(model, Path(folder) / "input.onnx")


EMBEDDING_OPS = ("Gather", "EmbedLayerNormalization")


def dynamic_op_types(quantize_embeddings: bool) -> list[str] | None:
    """Operator types dynamic INT8 quantizes: onnxruntime's defaults, minus embeddings if asked."""
    if quantize_embeddings:
        return None
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    return [op for op in IntegerOpsRegistry if op not in EMBEDDING_OPS]


def static_op_types(quantize_embeddings: bool) -> list[str]:
    """Static INT8 quantizes the weight-bearing ops only: quantizing every Add/Softmax/LayerNorm
    output of a transformer costs accuracy and, on CPU, gains nothing."""
    return ["MatMul", "Gemm"] + (["Gather"] if quantize_embeddings else [])


def quantize_dynamic(
    src_onnx: Path,
    dst_onnx: Path,
    *,
    per_channel: bool = False,
    reduce_range: bool = False,
    nodes_to_exclude: list[str] | None = None,
    op_types: list[str] | None = None,
    extra_options: dict | None = None,
) -> Path:
    """Dynamic INT8 (weights int8, activations uint8 quantized at run time) with the traps handled."""
    from onnxruntime.quantization import QuantType, quantize_dynamic as ort_quantize_dynamic

    model = load_for_quantization(src_onnx)
    options = {**base_extra_options(model), **(extra_options or {})}
    # Dynamic mode rewrites a Gemm into "<name>_MatMul" + Add before it checks the exclusions.
    nodes_to_exclude = [m for name in (nodes_to_exclude or []) for m in (name, name + "_MatMul")]
    dst_onnx = Path(dst_onnx)
    dst_onnx.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeslim-q-") as tmp, quiet_quantizer():
        staged = staged_copy(model, Path(tmp))
        ort_quantize_dynamic(
            staged,
            dst_onnx,
            op_types_to_quantize=op_types,
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=nodes_to_exclude or [],
            use_external_data_format=needs_external_data(model),
            extra_options=options,
        )
    return dst_onnx


class ListDataReader:
    """onnxruntime ``CalibrationDataReader`` over a list of feeds, keeping only the graph's inputs."""

    def __init__(self, feeds: list[dict], input_names: list[str]):
        self._feeds = [{k: v for k, v in feed.items() if k in input_names} for feed in feeds]
        self._index = 0

    def get_next(self) -> dict | None:
        if self._index >= len(self._feeds):
            return None
        self._index += 1
        return self._feeds[self._index - 1]

    def rewind(self) -> None:
        self._index = 0

    def __iter__(self):
        return iter(list(self._feeds))

    def __len__(self) -> int:
        return len(self._feeds)


def graph_input_names(model: onnx.ModelProto) -> list[str]:
    initializers = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Calibrators that stack every batch's activations into one array (so all batches need one shape).
HISTOGRAM_METHODS = ("entropy", "percentile")


def pad_to_common_length(feeds: list[dict]) -> list[dict]:
    """Right-pad batch-1 token feeds to the longest one, masked out, so their activations stack.

    onnxruntime's histogram calibrators (entropy, percentile) ``np.asarray`` the activations of all
    calibration batches together, which fails ("inhomogeneous shape") when texts differ in length.
    Token ids and masks are padded with 0; ``position_ids`` continue counting.
    """
    longest = max(f["input_ids"].shape[1] for f in feeds)
    padded = []
    for feed in feeds:
        extra = longest - feed["input_ids"].shape[1]
        out = {}
        for name, value in feed.items():
            if extra and value.ndim == 2 and value.shape[1] == feed["input_ids"].shape[1] and name != "position_ids":
                value = np.pad(value, ((0, 0), (0, extra)))
            elif extra and name == "position_ids":
                value = np.arange(longest, dtype=value.dtype)[None, :]
            out[name] = value
        padded.append(out)
    return padded


def quantize_static(
    src_onnx: Path,
    dst_onnx: Path,
    calibration: list[dict],
    *,
    method: str = "minmax",
    quant_format: str = "qdq",
    per_channel: bool = False,
    reduce_range: bool = False,
    quantize_embeddings: bool = True,
    nodes_to_exclude: list[str] | None = None,
) -> Path:
    """Static INT8: activation ranges calibrated on ``calibration`` feeds (uint8 activations, int8 weights)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static as ort_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    formats = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
    model = load_for_quantization(src_onnx)
    if method in HISTOGRAM_METHODS:
        calibration = pad_to_common_length(calibration)
    reader = ListDataReader(calibration, graph_input_names(model))
    dst_onnx = Path(dst_onnx)
    dst_onnx.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeslim-q-") as tmp, quiet_quantizer():
        staged = staged_copy(model, Path(tmp))
        ort_static(
            staged,
            dst_onnx,
            reader,
            quant_format=formats[quant_format],
            op_types_to_quantize=static_op_types(quantize_embeddings),
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=nodes_to_exclude or [],
            use_external_data_format=needs_external_data(model),
            calibrate_method=methods[method],
            extra_options={**base_extra_options(model), "MatMulConstBOnly": True},
        )
    return dst_onnx


WEIGHT_ONLY_ALGORITHMS = ("rtn", "hqq", "gptq")


def quantize_weight_only(
    src_onnx: Path,
    dst_onnx: Path,
    *,
    bits: int = 4,
    algorithm: str = "rtn",
    block_size: int = 32,
    symmetric: bool = False,
    accuracy_level: int | None = None,
    quantize_embeddings: bool = False,
    nodes_to_exclude: list[str] | None = None,
    calibration: list[dict] | None = None,
) -> Path:
    """Weight-only INT4/INT8 of constant-weight MatMuls into ``MatMulNBits`` (activations stay float).

    ``rtn`` rounds each block of ``block_size`` weights to the nearest level; ``hqq`` optimizes the
    scales and zero points (half-quadratic, no data); ``gptq`` corrects rounding error with second-order
    statistics from ``calibration`` feeds. ``quantize_embeddings`` also turns ``Gather`` into
    ``GatherBlockQuantized`` (rtn only).
    """
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    model = load_for_quantization(src_onnx)
    op_types = ("MatMul", "Gather") if quantize_embeddings else ("MatMul",)
    if algorithm == "rtn":
        algo = mnq.DefaultWeightOnlyQuantConfig(
            block_size=block_size, is_symmetric=symmetric, accuracy_level=accuracy_level,
            quant_format=QuantFormat.QOperator, op_types_to_quantize=op_types, bits=bits,
        )
    elif algorithm == "hqq":
        algo = mnq.HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits, op_types_to_quantize=("MatMul",))
    elif algorithm == "gptq":
        if not calibration:
            raise ValueError("gptq needs calibration feeds")
        reader = ListDataReader(calibration, graph_input_names(model))
        algo = mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=reader, block_size=block_size)
    else:
        raise ValueError(f"unknown weight-only algorithm {algorithm!r}")
    quantizer = mnq.MatMulNBitsQuantizer(
        model, bits=bits, block_size=block_size, is_symmetric=symmetric, accuracy_level=accuracy_level,
        nodes_to_exclude=list(nodes_to_exclude or []), algo_config=algo,
    )
    with quiet_quantizer():
        quantizer.process()
    dst_onnx = Path(dst_onnx)
    dst_onnx.parent.mkdir(parents=True, exist_ok=True)
    result = quantizer.model.model if hasattr(quantizer.model, "model") else quantizer.model
    return save_onnx(result, dst_onnx)
