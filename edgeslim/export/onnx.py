"""Stage ``export``: a torch model folder becomes ``model.onnx`` proven equal to its source.

Known architectures go through Optimum's exporter (encoders as ``text-classification``, decoders as
``text-generation-with-past`` so generation reuses the KV cache); anything Optimum does not know goes
through ``torch.onnx`` (dynamo). onnxruntime's transformer fusions (attention, layer norm, GELU) are
applied where onnxruntime has rules for the model type and counted, and onnxslim is kept only when it
removes nodes. The finished file is then checked against torch (see :mod:`edgeslim.export.parity`):
a model that differs beyond tolerance is never handed on.
"""

from __future__ import annotations

import inspect
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgeslim.artifacts import ONNX_FILE, Artifact, onnx_size_bytes
from edgeslim.errors import EdgeslimError, first_line
from edgeslim.export import parity as par
from edgeslim.families import fusion_type
from edgeslim.export.export_config import DEFAULT_OPSET, OPTIMUM_TASKS, ExportConfig, optimum_supports
from edgeslim.artifacts import copy_sidecar_files

# Fusions and onnxslim rewrite the model in one protobuf, which cannot exceed 2 GB.
LARGEST_OPTIMIZABLE = 2_000_000_000


@dataclass
class ExportResult:
    """What an export produced: the ONNX file and figures for the manifest."""

    onnx_path: Path
    exporter: str
    opset: int
    fusions: dict[str, Any] = field(default_factory=dict)
    slim: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        return {
            "size_bytes": onnx_size_bytes(self.onnx_path),
            "onnx_nodes": _node_count(self.onnx_path),
            "fused_ops": sum(self.fusions.get("counts", {}).values()),
            "parity_max_abs": self.parity.get("max_abs"),
            "parity_max_rel": self.parity.get("max_rel"),
        }


def export_onnx(model_dir: Path, out_dir: Path, task: str, opset: int = DEFAULT_OPSET, **options: Any) -> Path:
    """Export the torch model in ``model_dir`` to ``out_dir/model.onnx`` (+ config and tokenizer).

    The pipeline calls this for the fp32 teacher baseline; it applies the same export, fusions and
    parity check as stage ``export`` (``options`` are :class:`ExportConfig` fields) and returns the
    ONNX file's path. Parity is checked on built-in texts of varied shapes.
    """
    return export_model(Path(model_dir), Path(out_dir), task, ExportConfig(opset=opset, **options)).onnx_path


def export_model(model_dir: Path, out_dir: Path, task: str, config: ExportConfig,
                 eval_cases: list[par.ParityCase] | None = None, texts: list[str] | None = None,
                 log=lambda message: None) -> ExportResult:
    """Export, optimize and parity-check ``model_dir`` into ``out_dir``; raise if parity fails."""
    if task not in OPTIMUM_TASKS:
        raise EdgeslimError(f"export does not know task '{task}'; use text-classification or causal-lm")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not (model_dir / "config.json").is_file():
        raise EdgeslimError(f"{model_dir} is not a Hugging Face model folder (no config.json); point export at a torch artifact")
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_for_export(model_dir, task)
    exporter = _choose_exporter(config.exporter, model.config.model_type, task)
    log(f"exporting {model.config.model_type} with {exporter} (opset {config.opset})")
    onnx_path = out_dir / ONNX_FILE
    if exporter == "optimum":
        _optimum_export(model, model_dir, out_dir, task, config.opset)
    else:
        _dynamo_export(model, tokenizer, onnx_path, task, config.opset)
        copy_sidecar_files(model_dir, out_dir)
    if exporter == "dynamo" and task == "causal-lm":
        _mark_no_cache(out_dir / "config.json")
    cases = list(eval_cases or []) + par.varied_cases(tokenizer, texts or list(par.FALLBACK_TEXTS))
    result = ExportResult(onnx_path, exporter, config.opset)
    result.fusions, result.slim, result.parity = _optimize_checked(onnx_path, model, cases, config, log)
    result.slim["duplicates_removed"] = dedupe_initializers(onnx_path)
    return result


def _optimize_checked(onnx_path: Path, model, cases, config: ExportConfig, log):
    """Fusions and onnxslim, then parity; if the optimized graph fails parity but the plain export
    passes, keep the plain export and record why. Returns (fusions, slim, parity) reports."""
    wants = (config.fusions or config.slim) and onnx_size_bytes(onnx_path) < LARGEST_OPTIMIZABLE
    skipped = {"applied": False, "reason": "disabled" if not (config.fusions or config.slim) else "model over 2 GB"}
    if not wants:
        log(f"checking parity on {len(cases)} cases")
        return dict(skipped), dict(skipped), par.check_parity(onnx_path, model, cases, config.atol, config.rtol,
                                                              config.decode_steps)
    plain = onnx_path.with_name(".unoptimized." + onnx_path.name)
    shutil.copy2(onnx_path, plain)
    try:
        fusions = apply_fusions(onnx_path, model.config) if config.fusions else {"applied": False, "reason": "disabled"}
        slim = apply_slim(onnx_path) if config.slim else {"applied": False, "reason": "disabled"}
        if config.fusions:
            fusions["tied_weights"] = share_tied_weights(onnx_path)
        log(f"checking parity on {len(cases)} cases")
        parity = par.check_parity(onnx_path, model, cases, config.atol, config.rtol, config.decode_steps,
                                  raise_on_failure=False)
        if parity["passed"] or not (fusions.get("applied") or slim.get("applied")):
            if not parity["passed"]:
                raise EdgeslimError(par.ParityReport.message_for(parity))
            return fusions, slim, parity
        failure = par.ParityReport.message_for(parity, hint="")
        log(f"optimized graph failed parity, keeping the plain export: {failure}")
        os.replace(plain, onnx_path)
        parity = par.check_parity(onnx_path, model, cases, config.atol, config.rtol, config.decode_steps)
        reason = {"applied": False, "reason": f"optimized graph failed parity: {failure}"}
        return {**reason, "attempted": fusions}, {**reason, "attempted": slim}, parity
    finally:
        plain.unlink(missing_ok=True)


def _mark_no_cache(config_json: Path) -> None:
    """A dynamo-exported decoder has no KV-cache inputs: say so, so Optimum runs it without a cache."""
    import json

    config = json.loads(config_json.read_text())
    config["use_cache"] = False
    config_json.write_text(json.dumps(config, indent=2) + "\n")


def load_for_export(model_dir: Path, task: str):
    """The fp32 torch model and tokenizer of a torch artifact folder (factorized ones included)."""
    from transformers import AutoTokenizer

    from edgeslim.compress.lowrank import load_factorized

    try:
        model = load_factorized(model_dir, task, dtype=torch.float32)
        tokenizer = padding_tokenizer(AutoTokenizer.from_pretrained(model_dir))
    except (OSError, ValueError) as err:
        first = first_line(err)
        raise EdgeslimError(f"cannot load the torch model in {model_dir} for {task}: {first}") from err
    return model, tokenizer


def padding_tokenizer(tokenizer):
    """``tokenizer`` able to pad a batch (decoders often have no pad token: EOS pads, as in generation).

    Only the in-memory tokenizer used to build parity batches changes; saved files are untouched.
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def _choose_exporter(requested: str, model_type: str, task: str) -> str:
    supported = optimum_supports(model_type, task)
    if requested == "optimum" and not supported:
        raise EdgeslimError(f"Optimum cannot export model type '{model_type}' for {task}; set export.exporter: auto or dynamo")
    if requested == "auto":
        return "optimum" if supported else "dynamo"
    return requested


def _optimum_export(model, model_dir: Path, out_dir: Path, task: str, opset: int) -> None:
    """Optimum's exporter into ``out_dir``; it also writes config, generation config and tokenizer.

    A low-rank factorized model is not what ``from_pretrained`` of its folder builds, so Optimum
    exports the loaded model object instead of reloading the folder."""
    from optimum.exporters.onnx import main_export, onnx_export_from_model

    from edgeslim.compress.lowrank import is_factorized

    if is_factorized(model_dir):
        onnx_export_from_model(model, out_dir, opset=opset, do_validation=False, task=OPTIMUM_TASKS[task], device="cpu")
        copy_sidecar_files(model_dir, out_dir)
    else:
        main_export(str(model_dir), out_dir, task=OPTIMUM_TASKS[task], opset=opset, do_validation=False,
                    local_files_only=True, library_name="transformers", device="cpu")
    if not (out_dir / ONNX_FILE).is_file():
        raise EdgeslimError(f"Optimum wrote no {ONNX_FILE} for {model_dir}; set export.exporter: dynamo")


class LogitsOnly(torch.nn.Module):
    """Wraps a transformers model so the exported graph has the single output ``logits``."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.no_cache = "use_cache" in inspect.signature(inner.forward).parameters

    def forward(self, input_ids, attention_mask, token_type_ids=None, position_ids=None):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if self.no_cache:
            kwargs["use_cache"] = False
        return self.inner(**kwargs, return_dict=True).logits


def _dynamo_export(model, tokenizer, onnx_path: Path, task: str, opset: int) -> None:
    """torch.onnx (dynamo) export with dynamic batch and sequence axes; output ``logits``.

    Used for architectures Optimum does not know. Decoders are exported without a KV cache here
    (inputs ``input_ids``, ``attention_mask``, ``position_ids``), as Optimum's decoders without past.
    """
    accepted = inspect.signature(model.forward).parameters
    wanted = ("input_ids", "attention_mask", "position_ids") if task == "causal-lm" else \
        ("input_ids", "attention_mask", "token_type_ids")
    enc = dict(tokenizer(["an example sentence for export", "a second, longer example sentence for the export"],
                         padding=True, return_tensors="pt"))
    enc["position_ids"] = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    names = [n for n in wanted if n in accepted and n in enc]
    dims = {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}
    wrapper = LogitsOnly(model).eval()
    try:
        program = torch.onnx.export(wrapper, (), kwargs={n: enc[n] for n in names}, input_names=names,
                                    output_names=["logits"], dynamic_shapes={n: dims for n in names},
                                    opset_version=opset, dynamo=True, external_data=False, verbose=False)
        program.save(str(onnx_path))
    except Exception as err:  # torch.onnx raises many types; the user can only change the exporter/opset
        first = first_line(err)
        raise EdgeslimError(f"torch.onnx could not export {model.config.model_type}: {first[:200]}; try another export.opset") from err


def _node_count(onnx_path: Path) -> int:
    import onnx

    return len(onnx.load(str(onnx_path), load_external_data=False).graph.node)


def apply_fusions(onnx_path: Path, model_config) -> dict[str, Any]:
    """onnxruntime transformer fusions in place; returns which were applied and how many of each."""
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = getattr(model_config, "model_type", "")
    ort_type = fusion_type(model_type)
    if ort_type is None:
        return {"applied": False, "reason": f"onnxruntime has no fusion rules for model type '{model_type}'"}
    heads = getattr(model_config, "num_attention_heads", None) or getattr(model_config, "n_head", 0) or 0
    hidden = getattr(model_config, "hidden_size", None) or getattr(model_config, "n_embd", 0) or 0
    before = _node_count(onnx_path)
    try:
        optimizer = optimize_model(str(onnx_path), model_type=ort_type, num_heads=heads, hidden_size=hidden, opt_level=0)
    except Exception as err:  # fusion rules can trip over unfamiliar graph shapes; the unfused graph is fine
        return {"applied": False, "reason": f"onnxruntime {ort_type} fusions failed: {type(err).__name__}: {str(err)[:120]}"}
    counts = {op: int(n) for op, n in optimizer.get_fused_operator_statistics().items() if n}
    optimizer.save_model_to_file(str(onnx_path), use_external_data_format=False)
    report = {"applied": True, "model_type": ort_type, "counts": counts, "nodes_before": before,
              "nodes_after": _node_count(onnx_path)}
    max_positions = getattr(model_config, "max_position_embeddings", None)
    if counts.get("RotaryEmbedding") and max_positions:
        report["rotary_cache_rows"] = trim_rotary_caches(onnx_path, int(max_positions))
    return report


def trim_rotary_caches(onnx_path: Path, max_positions: int) -> int | None:
    """Cut the cos/sin caches of fused ``RotaryEmbedding`` nodes to the model's maximum position.

    onnxruntime's fusion builds them for 131072 positions whatever the model supports (33 MB of the
    572 MB SmolLM2-135M export; half of a tiny test model); rows past ``max_position_embeddings``
    are never read. Returns the row count kept, or None when there was nothing to cut.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    caches = {name for node in model.graph.node if node.op_type == "RotaryEmbedding" for name in node.input[2:4]}
    changed = False
    for tensor in model.graph.initializer:
        if tensor.name in caches and tensor.dims and tensor.dims[0] > max_positions:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor)[:max_positions].copy(), tensor.name))
            changed = True
    if not changed:
        return None
    onnx.save(model, str(onnx_path))
    return max_positions


def dedupe_initializers(onnx_path: Path) -> dict[str, Any]:
    """Keep one copy of initializers with identical type, shape and bytes, and point every user at it.

    Exporters and fusion rules copy a weight per use: ALBERT's layers share one set of weights, yet
    its exported file held one copy per layer (5x the torch model). Constants are read-only, so
    sharing one copy changes no output. Only weight matrices count (2-D or more, at least 4 KiB):
    small vectors such as untrained zero biases are often equal by chance, and a quantizer that
    derives a bias's scale from its node must keep one per node. Tensors in external data are left
    alone.
    """
    import hashlib

    import onnx

    if onnx_size_bytes(onnx_path) >= LARGEST_OPTIMIZABLE:
        return {"removed": 0, "reason": "model over 2 GB"}
    model = onnx.load(str(onnx_path), load_external_data=False)
    graph = model.graph
    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    for tensor in graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.dims) < 2 or len(tensor.raw_data) < 4096:
            continue
        key = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(tensor.raw_data).digest())
        rename[tensor.name] = first.setdefault(key, tensor.name)
    rename = {old: new for old, new in rename.items() if old != new}
    if not rename:
        return {"removed": 0}
    saved = sum(len(t.raw_data) for t in graph.initializer if t.name in rename)
    kept = [t for t in graph.initializer if t.name not in rename]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for node in _all_nodes(graph):
        node.input[:] = [rename.get(name, name) for name in node.input]
    onnx.save(model, str(onnx_path))
    return {"removed": len(rename), "bytes_saved": saved}


def _all_nodes(graph):
    """Every node of ``graph`` and of its subgraphs (If/Loop bodies read outer initializers too)."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for sub in [attribute.g, *attribute.graphs] if attribute.type in (5, 10) else []:
                yield from _all_nodes(sub)


def share_tied_weights(onnx_path: Path) -> dict[str, Any]:
    """Let a tied LM head read the embedding table directly instead of through ``Transpose``.

    Exports of models with tied embeddings compute the head as ``MatMul(x, Transpose(E))``.
    onnxruntime constant-folds that transpose into a second copy of the table, in memory at session
    start and in ``model.ort`` on disk (+113 MB for SmolLM2-135M). ``FusedMatMul(x, E, transB=1)``
    (com.microsoft, onnxruntime's CPU kernel) computes the same without the copy.
    """
    import onnx
    from onnx import helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    rewired = []
    for node in list(graph.node):
        if node.op_type != "Transpose" or node.input[0] not in initializers:
            continue
        weight = initializers[node.input[0]]
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
        users = consumers.get(node.output[0], [])
        shared = len(consumers.get(node.input[0], [])) > 1
        if len(weight.dims) != 2 or perm != [1, 0] or not shared or len(users) != 1:
            continue
        matmul = users[0]
        if matmul.op_type != "MatMul" or list(matmul.input).index(node.output[0]) != 1:
            continue
        fused = helper.make_node("FusedMatMul", [matmul.input[0], node.input[0]], list(matmul.output),
                                 name=matmul.name + "/tied", domain="com.microsoft", transB=1, alpha=1.0)
        index = list(graph.node).index(matmul)
        graph.node.remove(matmul)
        graph.node.insert(index, fused)
        graph.node.remove(node)
        rewired.append(node.input[0])
    if not rewired:
        return {"applied": False, "reason": "no transposed shared weight feeds a MatMul"}
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(onnx_path))
    return {"applied": True, "weights": rewired}


def apply_slim(onnx_path: Path) -> dict[str, Any]:
    """Run onnxslim; keep its graph only if it has fewer nodes and still loads in onnxruntime."""
    import onnx
    import onnxslim

    original = onnx.load(str(onnx_path))
    before = len(original.graph.node)
    try:
        slimmed = onnxslim.slim(original)
        par.new_session_from_proto(slimmed)
    except Exception as err:  # onnxslim fails on some contrib-op graphs; the unslimmed graph is fine
        return {"applied": False, "reason": f"onnxslim failed: {type(err).__name__}", "nodes_before": before}
    after = len(slimmed.graph.node)
    if after >= before:
        return {"applied": False, "reason": "no nodes removed", "nodes_before": before, "nodes_after": after}
    onnx.save(slimmed, str(onnx_path))
    return {"applied": True, "nodes_before": before, "nodes_after": after}


def export_artifact(model_dir: Path, out_dir: Path, task: str, config: ExportConfig | None = None, data=None,
                    log=lambda message: None) -> Artifact:
    """Export ``model_dir`` into ``out_dir`` and return the ONNX artifact with its parity report.

    ``data`` (a :class:`edgeslim.data.DataBundle`) adds real eval batches and texts to the parity
    cases. Stage ``export`` and the pipeline's fp32 teacher baseline both go through here, so the
    baseline is exported, fused and checked exactly like the student.
    """
    config = config or ExportConfig()
    eval_cases, texts = [], None
    if data is not None:
        from transformers import AutoTokenizer

        tokenizer = padding_tokenizer(AutoTokenizer.from_pretrained(model_dir))
        if config.parity_batches and getattr(data, "eval", None):
            eval_cases = par.batch_cases(data.batches(tokenizer, split="eval", batch_size=8), config.parity_batches)
        texts = [ex.text for ex in (getattr(data, "eval", None) or [])][:64] or None
    result = export_model(Path(model_dir), Path(out_dir), task, config, eval_cases, texts, log=log)
    log(f"parity ok: max abs {result.parity['max_abs']:.2e} over {len(result.parity['cases'])} cases")
    manifest = {
        "metrics": result.metrics(),
        "parity": result.parity,
        "export": {"exporter": result.exporter, "opset": result.opset, "fusions": result.fusions, "slim": result.slim},
    }
    return Artifact(Path(out_dir), "onnx", manifest)


def run(config: ExportConfig, artifact: Artifact, ctx) -> Artifact:
    """Export the input torch artifact to ``ctx.out_dir`` and attach the parity report."""
    return export_artifact(artifact.path, ctx.out_dir, ctx.task, config, ctx.data, log=ctx.log)
