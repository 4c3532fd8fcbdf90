"""neural-compressor (3.10, PyTorch API) weight-only quantization that reaches ONNX as real 4-bit weights.

neural-compressor's RTN, GPTQ and AWQ run on the torch model the ONNX file was exported from and
replace each ``nn.Linear`` by a module holding integer weights, per-group scales and zero points.
Exporting that module gives fp32 weights dequantized inside the graph (larger than fp32), so instead
each integer weight is written into the existing ONNX graph: the ``MatMul`` whose constant weight
equals the original ``Linear`` weight becomes a ``MatMulNBits`` holding the packed integers, scales
and zero points exactly as onnxruntime's own quantizer lays them out.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeslim.errors import EdgeslimError
from edgeslim.quantize.ort import load_for_quantization, save_onnx

TORCH_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class IntLinear:
    """One quantized ``Linear``: integer weight [out, in], scales and zero points [out, groups]."""

    qweight: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    bits: int
    group_size: int
    input_scale: np.ndarray | None = None  # AWQ: the layer computes linear(x * input_scale)

    def dequantized(self) -> np.ndarray:
        """The float weight [out, in] these integers stand for (for checks)."""
        groups = np.arange(self.qweight.shape[1]) // self.group_size
        zp = self.zero_points[:, groups] if self.zero_points is not None else 0
        return ((self.qweight.astype(np.float32) - zp) * self.scales[:, groups]).astype(np.float32)


_WORKSPACE_MOVED = False


def keep_workspace_out_of_cwd() -> None:
    """neural-compressor makes ``./nc_workspace/<time>/`` in the current folder when its torch modules
    load; point its workspace at a temporary folder first so runs leave nothing in the user's folder."""
    global _WORKSPACE_MOVED
    if not _WORKSPACE_MOVED:
        from neural_compressor.common import options

        options.workspace = tempfile.mkdtemp(prefix="edgeslim-nc-")
        _WORKSPACE_MOVED = True


@contextlib.contextmanager
def quiet_neural_compressor():
    """neural-compressor logs every layer at INFO; keep its warnings and errors only."""
    from neural_compressor.common.utils.logger import Logger

    Logger()  # its first use resets the level, so it must happen before ours is set
    inc_logger = logging.getLogger("neural_compressor")
    level = inc_logger.level
    inc_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        inc_logger.setLevel(level)


def load_torch_model(torch_dir: Path):
    """The torch model of ``torch_dir`` with the head its config names (causal LM or classifier)."""
    from transformers import AutoConfig

    from edgeslim.compress.torch_artifacts import auto_class

    config = AutoConfig.from_pretrained(torch_dir)
    causal = any(a.endswith("ForCausalLM") for a in (config.architectures or []))
    return auto_class("causal-lm" if causal else "text-classification").from_pretrained(torch_dir).eval()


def inc_config(spec):
    from neural_compressor.torch.quantization import AWQConfig, GPTQConfig, RTNConfig

    common = {"bits": spec.resolved_bits, "group_size": spec.block_size, "use_sym": spec.symmetric}
    if spec.algorithm == "rtn":
        return RTNConfig(**common, use_layer_wise=False)
    if spec.algorithm == "gptq":
        return GPTQConfig(**common, act_order=False)
    return AWQConfig(**common)


def torch_feeds(calibration: list[dict]) -> list[dict]:
    import torch

    return [{k: torch.from_numpy(np.asarray(v)) for k, v in feed.items() if k in TORCH_INPUTS} for feed in calibration]


def quantize_torch(model, spec, calibration: list[dict] | None):
    """Run neural-compressor's weight-only algorithm on a copy of ``model``; returns the converted copy."""
    import torch
    from neural_compressor.torch.quantization import convert, prepare

    feeds = torch_feeds(calibration or [])
    # AWQ traces the model with one positional tensor; the others take no example.
    example = feeds[0]["input_ids"] if feeds and spec.algorithm == "awq" else None
    prepared = prepare(copy.deepcopy(model), inc_config(spec), example_inputs=example)
    if spec.algorithm in ("gptq", "awq"):
        with torch.no_grad():
            for feed in feeds:
                prepared(**feed)
    return convert(prepared)


def autotune_torch(model, spec, calibration: list[dict] | None, evaluate, tolerable_loss: float):
    """neural-compressor's accuracy-driven ``autotune``: try the spec's algorithm, then the others, until
    ``evaluate(model)`` is within ``tolerable_loss`` (relative) of the float model; returns the best."""
    import torch
    from neural_compressor.torch.quantization import TuningConfig, autotune

    if evaluate is None:
        raise EdgeslimError("neural-compressor autotune needs eval data to score trials; give the recipe an eval split")
    causal = getattr(model.config, "is_decoder", False) or any(
        a.endswith("ForCausalLM") for a in (model.config.architectures or []))
    order = [spec.algorithm] + [a for a in ("rtn", "gptq") + (("awq",) if causal else ()) if a != spec.algorithm]
    configs = [inc_config(spec.model_copy(update={"algorithm": a})) for a in order]
    feeds = torch_feeds(calibration or [])

    def calibrate(prepared):
        with torch.no_grad():
            for feed in feeds:
                prepared(**feed)

    tuning = TuningConfig(config_set=configs, tolerable_loss=tolerable_loss, max_trials=len(configs))
    example = feeds[0]["input_ids"] if feeds else None
    return autotune(copy.deepcopy(model), tuning, eval_fn=evaluate, run_fn=calibrate, example_inputs=example)


def torch_accuracy(model, tokenizer, examples, max_length: int = 128) -> float:
    """Accuracy of a torch classifier (arg-max = label) or causal LM (next-token) on ``examples``."""
    import inspect

    import torch

    hits = total = 0
    causal = any(a.endswith("ForCausalLM") for a in (model.config.architectures or []))
    accepted = set(inspect.signature(model.forward).parameters)
    with torch.no_grad():
        for ex in examples:
            enc = tokenizer(ex.text, truncation=True, max_length=max_length, return_tensors="pt")
            enc = {k: v for k, v in enc.items() if k in accepted}
            if not causal:
                hits += int(model(**enc).logits[0].argmax()) == ex.label
                total += 1
            elif enc["input_ids"].shape[1] > 1:
                logits = model(**enc).logits[0, :-1]
                hits += int((logits.argmax(-1) == enc["input_ids"][0, 1:]).sum())
                total += logits.shape[0]
    return hits / max(total, 1)


def int_linears(model, spec) -> dict[str, IntLinear]:
    """Unpack every neural-compressor weight-only module into integer weight, scales, zero points."""
    layers = {}
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if not hasattr(module, "unpack") or not hasattr(module, "qweight"):
            continue
        parent_name = name.rsplit(".", 1)[0] if name.endswith(".linear") else None
        parent = modules.get(parent_name) if parent_name else None
        input_scale = None
        if parent is not None and hasattr(parent, "input_scale"):  # AWQ's MulLinear wrapper
            name, input_scale = parent_name, parent.input_scale.detach().float().cpu().numpy()
        params = module.unpack()
        g_idx = params.get("g_idx")
        trivial = np.arange(module.in_features) // module.group_size
        if g_idx is not None and not np.array_equal(g_idx.cpu().numpy(), trivial):
            raise EdgeslimError(f"neural-compressor reordered the columns of {name}; turn act_order off")
        qweight = params["int_weight"].cpu().numpy().astype(np.int32)
        zp = params.get("zp")
        zero_points = zp.cpu().numpy().astype(np.int32) if zp is not None else None
        if zero_points is None and qweight.min() < 0:  # symmetric: shift to unsigned, zero point 2^(bits-1)
            qweight = qweight + (1 << (spec.resolved_bits - 1))
        layers[name] = IntLinear(qweight, params["scales"].float().cpu().numpy(), zero_points,
                                 spec.resolved_bits, module.group_size, input_scale)
    return layers


def weight_key(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def pack_nbits(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``bits``-bit integers along the last axis into bytes, first value in the low bits."""
    per_byte = 8 // bits
    pad = (-values.shape[-1]) % per_byte
    if pad:
        values = np.concatenate([values, np.zeros(values.shape[:-1] + (pad,), values.dtype)], axis=-1)
    grouped = values.reshape(values.shape[:-1] + (-1, per_byte)).astype(np.uint8)
    packed = np.zeros(grouped.shape[:-1], dtype=np.uint8)
    for i in range(per_byte):
        packed |= (grouped[..., i] << (bits * i)).astype(np.uint8)
    return packed


def matmul_nbits_tensors(layer: IntLinear, prefix: str) -> tuple[list[onnx.TensorProto], dict]:
    """``MatMulNBits`` initializers (B, scales[, zero_points]) and attributes for one layer."""
    n, k = layer.qweight.shape
    bs = layer.group_size
    k_blocks = (k + bs - 1) // bs
    q = np.zeros((n, k_blocks * bs), dtype=np.int32)
    q[:, :k] = layer.qweight
    packed = pack_nbits(q.reshape(n, k_blocks, bs), layer.bits)
    tensors = [numpy_helper.from_array(packed, f"{prefix}_Q{layer.bits}"),
               numpy_helper.from_array(layer.scales[:, :k_blocks].astype(np.float32), f"{prefix}_scales")]
    if layer.zero_points is not None:
        zp = pack_nbits(layer.zero_points[:, :k_blocks], layer.bits)
        tensors.append(numpy_helper.from_array(zp, f"{prefix}_zero_points"))
    attrs = {"K": k, "N": n, "bits": layer.bits, "block_size": bs}
    return tensors, attrs


def write_into_onnx(model: onnx.ModelProto, originals: dict[str, str], layers: dict[str, IntLinear],
                    accuracy_level: int | None) -> list[str]:
    """Replace each ``MatMul`` whose weight is a quantized ``Linear`` by ``MatMulNBits``; return the nodes."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    by_key = {}
    for name, key in originals.items():
        by_key.setdefault(key, []).append(name)
    replaced, new_nodes, used = [], [], set()
    for node in graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        owners = by_key.get(weight_key(numpy_helper.to_array(weight))) if weight is not None and weight.dims and len(weight.dims) == 2 else None
        if not owners or len(owners) != 1 or owners[0] not in layers:
            new_nodes.append(node)
            continue
        layer = layers[owners[0]]
        tensors, attrs = matmul_nbits_tensors(layer, weight.name)
        if accuracy_level:
            attrs["accuracy_level"] = accuracy_level
        graph.initializer.extend(tensors)
        activation = node.input[0]
        if layer.input_scale is not None:
            scale = numpy_helper.from_array(layer.input_scale.astype(np.float32), f"{weight.name}_input_scale")
            graph.initializer.append(scale)
            activation = f"{node.name}_scaled_input"
            new_nodes.append(helper.make_node("Mul", [node.input[0], scale.name], [activation], name=f"{node.name}_input_scale"))
        new_nodes.append(helper.make_node("MatMulNBits", [activation] + [t.name for t in tensors], list(node.output),
                                          name=node.name + f"_Q{attrs['bits']}", domain="com.microsoft", **attrs))
        replaced.append(node.name)
        used.add(weight.name)
    del graph.node[:]
    graph.node.extend(new_nodes)
    still_used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name not in used or i.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return replaced


def quantize_neural_compressor(spec, src: Path, dst: Path, torch_dir: Path | None, calibration: list[dict] | None,
                               evaluate=None, tolerable_loss: float = 0.01) -> Path:
    """Weight-only quantize the torch model with neural-compressor and write its integers into ``src``.

    ``evaluate(torch_model) -> accuracy`` scores autotune's trials (``spec.autotune``).
    """
    import torch

    if torch_dir is None:
        raise EdgeslimError("mode neural_compressor needs the torch model the ONNX was exported from; "
                            "run it after the export stage of the same recipe")
    keep_workspace_out_of_cwd()
    model = load_torch_model(torch_dir)
    originals = {name: weight_key(m.weight.detach().T.numpy())
                 for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    with quiet_neural_compressor():
        if spec.autotune:
            quantized = autotune_torch(model, spec, calibration, evaluate, tolerable_loss)
        else:
            quantized = quantize_torch(model, spec, calibration)
    layers = int_linears(quantized, spec)
    onnx_model = load_for_quantization(src)
    replaced = write_into_onnx(onnx_model, originals, layers, spec.accuracy_level)
    if not replaced:
        raise EdgeslimError(f"none of the ONNX model's MatMul weights match the torch model in {torch_dir}; "
                            "quantize the export of that same model")
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    return save_onnx(onnx_model, Path(dst))
