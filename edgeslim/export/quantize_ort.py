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

import tempfile
from pathlib import Path

import onnx

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


def staged_copy(model: onnx.ModelProto, folder: Path) -> Path:
    """Write ``model`` into ``folder`` as ``input.onnx`` so the quantizer reads a cleaned file."""
    path = Path(folder) / "input.onnx"
    onnx.save_model(model, str(path), save_as_external_data=needs_external_data(model))
    return path


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
    dst_onnx = Path(dst_onnx)
    dst_onnx.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeslim-q-") as tmp:
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
