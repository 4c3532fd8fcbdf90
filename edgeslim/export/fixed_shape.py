"""A fixed-shape fp32 model for mobile accelerators: ``model_fixed.ort`` that NNAPI (Android) and
CoreML (iOS) can run whole.

The release's ``model.onnx`` is tuned for the CPU execution provider: fused ``com.microsoft`` operators,
dynamic INT8, dynamic shapes. NNAPI and CoreML run none of that. Their operator sets are small and differ
(NNAPI has no ``Erf`` or ``LayerNormalization``; CoreML's NeuralNetwork format has no ``Unsqueeze`` or
``ReduceMean``; its MLProgram format no ``Gather`` but for embeddings), and NNAPI needs every shape fixed.
So this model is exported again from the release's torch model with a portable operator set:

- batch 1 and a fixed sequence length (the recipe's ``data.max_length``; pad every input to it);
- ``int32`` token ids (NNAPI's ``Gather`` needs int32 indices unless they are constant);
- eager attention, whose padding mask is plain arithmetic in BERT-style models (no ``Where``/``Expand``),
  and constant position ids (no ``CumSum`` over the token ids, as RoBERTa and MPNet compute them);
- LayerNorm written with ``MatMul`` means, GELU as its tanh form (error below 1e-3 per activation);
- after onnxruntime's basic optimizations (what the ORT conversion keeps for these providers), each
  ``Unsqueeze``/``Squeeze`` and each ``Gather`` of a constant index becomes ``Slice``/``Reshape``.

The bundle stage checks it against the dynamic fp32 export on real texts and records onnxruntime's mobile
usability verdict for it.
"""

from __future__ import annotations

import inspect
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from edgeslim.artifacts import ONNX_FILE
from edgeslim.errors import EdgeslimError, first_line
from edgeslim.export.bundle_files import FIXED_OPERATORS_FILE, FIXED_ORT_FILE

FIXED_INPUTS = ("input_ids", "attention_mask")
FIXED_OPSET = 14  # below 17, so LayerNorm cannot come back as one LayerNormalization node
GELU_CLASSES = ("GELUActivation", "GELU")  # exact (erf) GELU: transformers' class and torch's


class TanhGELU(nn.Module):
    """GELU in its tanh form: Mul, Add and Tanh, operators every mobile provider has."""

    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


class MatMulLayerNorm(nn.Module):
    """LayerNorm over the last axis with its means taken by ``MatMul`` (CoreML NN has no ReduceMean)."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps
        width = int(norm.normalized_shape[-1])
        self.register_buffer("average", torch.full((width, 1), 1.0 / width), persistent=False)

    def forward(self, x):
        centered = x - x @ self.average
        variance = (centered * centered) @ self.average
        out = centered / torch.sqrt(variance + self.eps)
        if self.weight is not None:
            out = out * self.weight
        return out + self.bias if self.bias is not None else out


def portable_modules(model: nn.Module) -> dict[str, int]:
    """Swap exact GELU and LayerNorm modules for their portable forms in place; return the counts."""
    counts = {"gelu": 0, "layer_norm": 0}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ in GELU_CLASSES and getattr(child, "approximate", "none") == "none":
                setattr(parent, name, TanhGELU())
                counts["gelu"] += 1
            elif isinstance(child, nn.LayerNorm) and len(child.normalized_shape) == 1:
                setattr(parent, name, MatMulLayerNorm(child))
                counts["layer_norm"] += 1
    return counts


class FixedShapeLogits(nn.Module):
    """The model with inputs ``input_ids`` and ``attention_mask`` only and constant ``position_ids``.

    Models that derive positions from the token ids (RoBERTa, MPNet: a CumSum over the non-pad tokens)
    get the positions they compute for an unpadded text of the fixed length; the padded tail's positions
    then differ, but those tokens are masked out, so the outputs of the real tokens are the same.
    """

    def __init__(self, model: nn.Module, length: int):
        super().__init__()
        self.inner = model
        accepts = inspect.signature(model.forward).parameters
        positions = unpadded_positions(model, length) if "position_ids" in accepts else None
        self.register_buffer("position_ids", positions, persistent=False)

    def forward(self, input_ids, attention_mask):
        kwargs = {"position_ids": self.position_ids} if self.position_ids is not None else {}
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs).logits


def unpadded_positions(model: nn.Module, length: int) -> torch.Tensor | None:
    """The position ids ``model`` looks up for a text of ``length`` real tokens (``None`` when it has
    no learned position embedding, e.g. rotary or relative positions)."""
    table = next((m for name, m in model.named_modules()
                  if name.endswith("position_embeddings") and isinstance(m, nn.Embedding)), None)
    if table is None:
        return None
    seen = []
    hook = table.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    pad = getattr(model.config, "pad_token_id", None)
    token = 1 if pad != 1 else 2
    try:
        with torch.no_grad():
            model(input_ids=torch.full((1, length), token, dtype=torch.long),
                  attention_mask=torch.ones(1, length, dtype=torch.long))
    finally:
        hook.remove()
    return seen[0].reshape(1, length).to(torch.long) if seen and seen[0].numel() == length else None


def export_fixed(torch_dir: Path, task: str, onnx_path: Path, length: int) -> dict[str, int]:
    """Export the torch model in ``torch_dir`` with fixed [1, length] int32 inputs to ``onnx_path``."""
    from edgeslim.compress.lowrank import load_factorized

    try:
        model = load_factorized(torch_dir, task, dtype=torch.float32, attn_implementation="eager")
    except (OSError, ValueError) as err:
        raise EdgeslimError(f"bundle.fixed_shape: cannot load the torch model in {torch_dir}: {first_line(err)}") from err
    counts = portable_modules(model)
    ids = torch.zeros(1, length, dtype=torch.int32)
    mask = torch.ones(1, length, dtype=torch.int32)
    try:
        with warnings.catch_warnings():  # tracer warnings about constant shapes, which is the point here, and that
            warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated (it takes opset 14); parity checks the result
            torch.onnx.export(FixedShapeLogits(model, length).eval(), (ids, mask), str(onnx_path), input_names=list(FIXED_INPUTS),
                              output_names=["logits"], opset_version=FIXED_OPSET, dynamo=False)
    except Exception as err:  # torch.onnx raises many types; the user can only turn the option off
        raise EdgeslimError(f"bundle.fixed_shape: torch.onnx could not export {model.config.model_type} with fixed "
                            f"shapes: {first_line(err)[:200]}; set bundle.fixed_shape: false") from err
    return counts


def static_rewrites(onnx_path: Path) -> int:
    """Rewrite, in place, the shape-only operators some mobile providers lack into ones all have.

    With every shape fixed, ``Unsqueeze``/``Squeeze`` are ``Reshape`` to their known output shape, and a
    ``Gather`` of one constant index from a computed tensor (the [CLS] row) is ``Slice`` + ``Reshape``.
    Returns how many nodes were rewritten.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    graph = model.graph
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in list(graph.value_info) + list(graph.output) + list(graph.input)
              if v.type.tensor_type.HasField("shape")}
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes, added, rewritten = [], [], 0
    for node in graph.node:
        shape = shapes.get(node.output[0]) if node.output else None
        static = shape is not None and all(d is not None for d in shape)
        index = constants.get(node.input[1]) if node.op_type == "Gather" and len(node.input) > 1 else None
        if static and node.op_type in ("Unsqueeze", "Squeeze"):
            replacement = [_reshape(node, node.input[0], shape, added)]
        elif static and index is not None and index.ndim == 0 and node.input[0] not in constants:
            replacement = _gather_as_slice(node, int(index), shape, added)
        else:
            nodes.append(node)
            continue
        nodes += replacement
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input} | {o.name for o in graph.output}
    kept = [t for t in list(graph.initializer) + added if t.name in used]  # the axes the rewrites no longer read
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_path))
    return rewritten


def _reshape(node, data: str, shape: list[int], added: list):
    """``node``'s output as a Reshape of ``data`` to the static ``shape``."""
    from onnx import helper

    target = _constant(added, f"{node.output[0]}/shape", np.array(shape, dtype=np.int64))
    return helper.make_node("Reshape", [data, target], list(node.output), name=node.name)


def _gather_as_slice(node, index: int, shape: list[int], added: list) -> list:
    """A Gather of one constant ``index`` along its axis as the one-row Slice there, reshaped to the
    Gather's output (which drops that axis)."""
    from onnx import helper

    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    end = index + 1 if index != -1 else 2**62  # the last row: slice to the end
    sliced = f"{node.output[0]}/slice"
    bounds = [_constant(added, f"{sliced}/{key}", np.array([value], dtype=np.int64))
              for key, value in (("starts", index), ("ends", end), ("axes", axis))]
    return [helper.make_node("Slice", [node.input[0], *bounds], [sliced], name=f"{node.name}/slice"),
            _reshape(node, sliced, shape, added)]


def _constant(initializers: list, name: str, value: np.ndarray) -> str:
    from onnx import numpy_helper

    initializers.append(numpy_helper.from_array(value, name))
    return name


def fixed_feeds(tokenizer, texts: Iterable[str], length: int) -> list[dict[str, np.ndarray]]:
    """One batch-1 feed per text, padded (and truncated) to ``length`` tokens, int32."""
    feeds = []
    for text in texts:
        enc = tokenizer([text], padding="max_length", truncation=True, max_length=length, return_tensors="np")
        feeds.append({name: np.asarray(enc[name], dtype=np.int32) for name in FIXED_INPUTS})
    return feeds


def compare_with_dynamic(fixed_model: Path, dynamic_onnx: Path, tokenizer, texts: list[str], length: int) -> dict[str, Any]:
    """Largest logit difference and argmax agreement of the fixed-shape model (padded inputs) against
    the dynamic fp32 export (unpadded inputs) on ``texts``."""
    from edgeslim.export.ort_format import open_session
    from edgeslim.export.parity import onnx_feeds

    fixed, dynamic = open_session(fixed_model), open_session(dynamic_onnx)
    worst, agree = 0.0, 0
    for text, feed in zip(texts, fixed_feeds(tokenizer, texts, length)):
        got = fixed.run(None, feed)[0]
        enc = tokenizer([text], truncation=True, max_length=length, return_tensors="np")
        ref = dynamic.run(None, onnx_feeds(dynamic, {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}))[0]
        worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - ref))))
        agree += int(np.argmax(got) == np.argmax(ref))
    return {"texts": len(texts), "max_abs_vs_dynamic": worst, "argmax_agreement": agree / max(len(texts), 1)}


def build_fixed_shape(torch_dir: Path, dynamic_onnx: Path, out_dir: Path, task: str, tokenizer, texts: list[str],
                      length: int, atol: float, target_platform: str, log) -> dict[str, Any]:
    """Write ``model_fixed.ort`` and its operator config into ``out_dir``; return the manifest entry.

    Raises :class:`EdgeslimError` when the model differs from the dynamic export by more than ``atol``.
    """
    from edgeslim.export.ort_format import convert_to_ort
    from edgeslim.export.mobile_check import mobile_usability
    from onnxruntime.tools.onnx_model_utils import optimize_model

    log(f"exporting the fixed-shape model for NNAPI/CoreML ([1, {length}] int32 inputs)")
    with tempfile.TemporaryDirectory() as tmp:
        exported, basic = Path(tmp) / "exported.onnx", Path(tmp) / ONNX_FILE
        swapped = export_fixed(torch_dir, task, exported, length)
        optimize_model(exported, basic)  # onnxruntime's basic level: constant folding, as the converter keeps
        rewritten = static_rewrites(basic)
        usability = mobile_usability(basic)
        entry = convert_to_ort(basic, out_dir, target_platform, ort_name=FIXED_ORT_FILE,
                               operators_name=FIXED_OPERATORS_FILE, optimization_level="basic")
    parity = compare_with_dynamic(out_dir / FIXED_ORT_FILE, dynamic_onnx, tokenizer, texts, length)
    if parity["max_abs_vs_dynamic"] > atol:
        for name in (FIXED_ORT_FILE, FIXED_OPERATORS_FILE):
            (out_dir / name).unlink(missing_ok=True)
        raise EdgeslimError(f"bundle.fixed_shape: {FIXED_ORT_FILE} differs from the dynamic model by "
                            f"{parity['max_abs_vs_dynamic']:.3g} > bundle.fixed_atol {atol:g}; raise fixed_atol "
                            "or set fixed_shape: false")
    verdicts = ", ".join(f"{ep} {p['verdict']}" + (f" (unsupported: {', '.join(p['unsupported_ops'])})"
                                                     if p["verdict"] == "NO" else "")
                         for ep, p in usability["providers"].items())
    log(f"wrote {FIXED_ORT_FILE}: {verdicts}; max |logit difference| {parity['max_abs_vs_dynamic']:.2g}")
    return {"written": True, **entry, "sequence_length": length, "batch": 1, "input_names": list(FIXED_INPUTS),
            "input_dtype": "int32", "portable_modules": swapped, "rewritten_nodes": rewritten,
            "parity": parity, "mobile_usability": usability}
