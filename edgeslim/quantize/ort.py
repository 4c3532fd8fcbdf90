"""onnxruntime quantization calls with the traps of this stack handled.

Exports from this stack trip the onnxruntime quantizer in known ways; each is handled here, in one
place, so every quantization mode benefits:

* ``quant_pre_process`` (symbolic shape inference) fails with "Incomplete symbolic shape inference"
  on TorchScript and dynamo exports of transformers, so it is never called.
* dynamo exports carry ``graph.value_info`` entries whose shapes conflict with what ONNX shape
  inference derives again inside the quantizer ("Inferred shape and existing shape differ"); the
  shapes are only hints, so ``value_info`` is rebuilt with element types only.
* graphs fused by the onnxruntime transformer optimizer (O2: ``Attention``, ``SkipLayerNormalization``
  ...) hold contrib-op outputs that ONNX shape inference cannot type: dynamic mode then cannot find
  the type of a MatMul input (``DefaultTensorType`` tells it the model's float type) and static QDQ
  silently skips every untyped tensor; the rebuilt ``value_info`` carries the types onnxruntime
  itself resolves when it loads the graph.
* entropy/percentile calibration stacks all calibration batches into one array, which fails for
  texts of different lengths; those feeds are padded to one length (masked).
* ``quantize_static`` gives its entropy calibrator as many histogram bins as quantized bins, so
  entropy calibration returns the MinMax ranges; the ranges are computed here with a finer histogram.
* dynamic mode renames a ``Gemm`` to ``<name>_MatMul`` before it checks ``nodes_to_exclude``.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx

from edgeslim.targets.isa import resolve_reduce_range

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
    """Load an ONNX model (with external data) with ``value_info`` rebuilt as element types only.

    The exporter's ``value_info`` shapes can conflict with what the quantizer re-infers (dynamo
    exports), and fused graphs have no types past their contrib ops, which makes static QDQ skip
    every tensor it cannot type. Types from onnxruntime's own graph resolution fix both.
    """
    model = onnx.load(str(src_onnx), load_external_data=True)
    types = tensor_types(model) if not needs_external_data(model) else {}
    del model.graph.value_info[:]
    boundary = {v.name for v in list(model.graph.input) + list(model.graph.output)}
    boundary |= {i.name for i in model.graph.initializer}
    for name, elem_type in types.items():
        if name not in boundary:
            model.graph.value_info.append(onnx.helper.make_tensor_value_info(name, elem_type, None))
    return model


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every node output, as onnxruntime resolves it when it loads the graph (no run)."""
    from edgeslim.targets.harness import make_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    listed = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for name in node.output:
            if name and name not in listed:
                probe.graph.output.append(onnx.ValueInfoProto(name=name))
                listed.add(name)
    try:
        session = make_session(probe.SerializeToString(), {"threads": 0, "graph_optimization_level": "disable"})
    except Exception:  # a graph onnxruntime cannot load: quantize without type hints
        return {}
    types = {}
    for out in session.get_outputs():
        name = out.type[len("tensor("):-1] if out.type.startswith("tensor(") else None
        elem = getattr(onnx.TensorProto, name.upper(), None) if name else None
        if isinstance(elem, int):
            types[out.name] = elem
    return types


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
    reduce_range: bool | None = None,
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
            reduce_range=resolve_reduce_range(reduce_range),
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
    reduce_range: bool | None = None,
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
    op_types = static_op_types(quantize_embeddings)
    with tempfile.TemporaryDirectory(prefix="edgeslim-q-") as tmp, quiet_quantizer():
        staged = staged_copy(model, Path(tmp))
        cache = None
        if method == "entropy":
            cache = entropy_ranges(staged, reader, op_types, Path(tmp))
            reader.rewind()
        ort_static(
            staged,
            dst_onnx,
            reader,
            calibration_cache_path=cache,
            quant_format=formats[quant_format],
            op_types_to_quantize=op_types,
            per_channel=per_channel,
            reduce_range=resolve_reduce_range(reduce_range),
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=nodes_to_exclude or [],
            use_external_data_format=needs_external_data(model),
            calibrate_method=methods[method],
            extra_options={**base_extra_options(model), "MatMulConstBOnly": True},
        )
    return dst_onnx


# Entropy (KL) calibration: a finer histogram searched for the threshold that loses the least
# information when folded into 128 levels. quantize_static cannot pass these through and uses 128
# bins for both, which leaves one candidate threshold, the full range: MinMax. 512 bins give 192
# candidate thresholds; TensorRT's 2048 give 960 but onnxruntime searches them in Python, ~5x slower.
ENTROPY_BINS, ENTROPY_QUANTIZED_BINS = 512, 128


def entropy_ranges(staged: Path, reader, op_types: list[str], folder: Path) -> Path:
    """Entropy-calibrated activation ranges for ``staged``, saved as a calibration cache file."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator, save_tensors_data

    calibrator = create_calibrator(
        staged, op_types, augmented_model_path=str(folder / "augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS},
    )
    calibrator.collect_data(reader)
    cache = folder / "entropy-ranges.json"
    save_tensors_data(calibrator.compute_data(), cache)
    return cache


WEIGHT_ONLY_ALGORITHMS = ("rtn", "hqq", "offset")


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
    fuse_siblings: bool = True,
) -> Path:
    """Weight-only INT4/INT8 of constant-weight MatMuls into ``MatMulNBits`` (activations stay float).

    ``rtn`` rounds each block of ``block_size`` weights to the nearest level; ``hqq`` optimizes the
    scales and float zero points (half-quadratic, no data): weights that already lie on an
    asymmetric 4-bit grid of the same blocks (a model dequantized from a GGUF Q4_1 file) come back
    exactly, where RTN's integer zero points cannot. onnxruntime's bundled GPTQ is not offered: on
    this stack it writes exactly RTN's bytes, and on fused graphs an invalid model (see
    :mod:`edgeslim.quantize.inc` for a GPTQ that works). ``quantize_embeddings`` also turns ``Gather`` into
    ``GatherBlockQuantized`` (RTN; asymmetric unless RTN is symmetric). ``offset`` keeps each block's own
    float minimum like HQQ but runs on the fast symmetric kernel (:mod:`edgeslim.quantize.offset_int4`).
    A tied LM head is quantized too (see :func:`untie_head_for_quantization`); with
    ``quantize_embeddings`` its lookup then reads the head's 4-bit bytes
    (:mod:`edgeslim.quantize.tied_table`), so the table is stored once. ``fuse_siblings`` first joins
    MatMuls that read one input (query, key, value; gate, up) into one
    (:mod:`edgeslim.quantize.sibling_matmuls`): the same weights, fewer and wider kernel calls.
    """
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    if algorithm not in WEIGHT_ONLY_ALGORITHMS:
        raise ValueError(f"unknown weight-only algorithm {algorithm!r}")
    model = load_for_quantization(src_onnx)
    heads = untie_head_for_quantization(model)
    options = {"block_size": block_size, "bits": bits, "accuracy_level": accuracy_level,
               "nodes_to_exclude": list(nodes_to_exclude or [])}
    if fuse_siblings:
        from edgeslim.quantize.sibling_matmuls import fuse_sibling_matmuls

        fuse_sibling_matmuls(model, options["nodes_to_exclude"])
    if algorithm == "rtn":
        model = _nbits_pass(model, mnq.DefaultWeightOnlyQuantConfig(
            block_size=block_size, is_symmetric=symmetric, accuracy_level=accuracy_level,
            quant_format=QuantFormat.QOperator, op_types_to_quantize=("MatMul",), bits=bits), symmetric, **options)
    elif algorithm == "offset":
        from edgeslim.quantize.offset_int4 import quantize_offset_int4

        quantize_offset_int4(model, block_size, accuracy_level, options["nodes_to_exclude"])
    else:
        model = _nbits_pass(model, mnq.HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits,
                                                                 op_types_to_quantize=("MatMul",)), False, **options)
    if quantize_embeddings:
        from edgeslim.quantize.tied_table import share_head_table

        for head, table in heads.items():  # the lookup reads the head's 4-bit table: one copy, not two
            options["nodes_to_exclude"] += share_head_table(model, head, table)
        # any other table: RTN's GatherBlockQuantized (HQQ's float zero points have no 4-bit lookup)
        symmetric_table = symmetric and algorithm == "rtn"
        model = _nbits_pass(model, mnq.DefaultWeightOnlyQuantConfig(
            block_size=block_size, is_symmetric=symmetric_table, accuracy_level=accuracy_level,
            quant_format=QuantFormat.QOperator, op_types_to_quantize=("Gather",), bits=bits), symmetric_table, **options)
    dst_onnx = Path(dst_onnx)
    dst_onnx.parent.mkdir(parents=True, exist_ok=True)
    return save_onnx(model, dst_onnx)


def _nbits_pass(model: onnx.ModelProto, algo, symmetric: bool, *, block_size: int, bits: int,
                accuracy_level: int | None, nodes_to_exclude: list[str]) -> onnx.ModelProto:
    """One pass of onnxruntime's ``MatMulNBitsQuantizer`` with ``algo``; the rewritten model."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    quantizer = mnq.MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=symmetric,
                                         accuracy_level=accuracy_level, nodes_to_exclude=nodes_to_exclude,
                                         algo_config=algo)
    with quiet_quantizer():
        quantizer.process()
    return quantizer.model.model if hasattr(quantizer.model, "model") else quantizer.model


def untie_head_for_quantization(model: onnx.ModelProto) -> dict[str, str]:
    """Give a tied LM head its own transposed weight so ``MatMulNBits`` can quantize it.

    The export computes a tied head as ``FusedMatMul(x, E, transB=1)`` reading the embedding table
    ``E`` (no float copy; see :func:`edgeslim.export.onnx.share_tied_weights`). The weight-only
    quantizer only handles ``MatMul`` with a constant ``[K, N]`` weight, so it left the largest matmul
    of a small LM (hidden x vocabulary) in fp32. Rewritten as ``MatMul(x, E^T)`` with ``E^T`` a new
    initializer, the head becomes INT4 and its float copy disappears; ``E`` stays for the ``Gather``
    (quantized too with ``quantize_embeddings``). Returns each rewritten node's name -> its table's name.
    """
    from onnx import helper, numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}
    rewritten = {}
    for index, node in enumerate(list(model.graph.node)):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "FusedMatMul" or node.domain != "com.microsoft" or len(node.input) != 2:
            continue
        if attrs.get("transB") != 1 or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 \
                or attrs.get("transBatchA", 0) or attrs.get("transBatchB", 0):
            continue
        weight = initializers.get(node.input[1])
        if weight is None or len(weight.dims) != 2:
            continue
        transposed = numpy_helper.from_array(numpy_helper.to_array(weight).T.copy(), node.input[1] + "_transposed")
        model.graph.initializer.append(transposed)
        matmul = helper.make_node("MatMul", [node.input[0], transposed.name], list(node.output), name=node.name)
        model.graph.node.remove(node)
        model.graph.node.insert(index, matmul)
        rewritten[node.name] = node.input[1]
    return rewritten
