"""Stage ``bundle``: the folder an app developer receives, ready for Optimum, onnxruntime and phones.

The bundle holds ``model.onnx`` with its ``config.json`` and tokenizer files (so Optimum's
``ORTModelForSequenceClassification`` / ``ORTModelForCausalLM`` ``.from_pretrained(dir)`` loads it),
``model.ort`` and ``required_operators.config`` for reduced onnxruntime mobile builds (converted with
*fixed* optimizations only: saved runtime-optimization records fail to load for QDQ models), an
optional ``model_with_tokenizer.onnx`` that takes raw strings (tokenizer in the graph through
onnxruntime-extensions), the metadata an app needs in both ONNX ``metadata_props`` and
``edgeslim.json``, a model card ``README.md``, and onnxruntime's mobile usability verdict (NNAPI and
CoreML partitions, unsupported operators) in the manifest.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgeslim.artifacts import ONNX_FILE, Artifact, atomic_write_json, copy_sidecar_files, onnx_size_bytes, read_json
from edgeslim.errors import EdgeslimError
from edgeslim.export.onnx import padding_tokenizer
from edgeslim.export.bundle_config import BundleConfig
from edgeslim.export.bundle_files import FIXED_ORT_FILE, METADATA_FILE, ORT_FILE, TOKENIZER_MODEL_FILE
from edgeslim.export.mobile_check import mobile_usability
from edgeslim.export.ort_format import ORT_NONDETERMINISM, open_session, ort_format_files
from edgeslim.export.model_card import write_model_card

METADATA_PREFIX = "edgeslim."
# Inputs the in-graph tokenizer can provide, in the order a BERT-style tokenizer emits them.
TOKENIZER_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")
SAMPLE_TEXT = "an example sentence to check the bundle"
FIXED_SHAPE_TEXTS = 32  # eval texts model_fixed.ort is compared on


# Copying the model folder ---------------------------------------------------------------------

def copy_model_folder(src: Path, dst: Path) -> None:
    """Copy ``model.onnx`` (with external data), config and tokenizer files from ``src`` to ``dst``."""
    src, dst = Path(src), Path(dst)
    if not (src / ONNX_FILE).is_file():
        raise EdgeslimError(f"{src} has no {ONNX_FILE}; put stage 'bundle' after 'export' or 'quantize'")
    if not (src / "config.json").is_file():
        raise EdgeslimError(f"{src} has no config.json; the bundle needs the model's config (re-run export)")
    dst.mkdir(parents=True, exist_ok=True)
    copy_sidecar_files(src, dst)
    for path in src.glob(ONNX_FILE + "*"):  # model.onnx and its external data (model.onnx.data / _data)
        if path.is_file():
            shutil.copy2(path, dst / path.name)


# Metadata -------------------------------------------------------------------------------------

def bundle_metadata(folder: Path, task: str, labels: list[str] | None, max_length: int | None,
                    recipe_hash: str | None, recipe_name: str | None) -> dict[str, Any]:
    """What an app needs to drive the model: task, labels, max length, input/output names, versions."""
    import onnx

    from edgeslim.version import __version__

    model = onnx.load(str(folder / ONNX_FILE), load_external_data=False)
    config = read_json(folder / "config.json")
    if labels is None and task == "text-classification" and config.get("id2label"):
        id2label = config["id2label"]
        labels = [id2label[str(i)] if str(i) in id2label else id2label[i] for i in range(len(id2label))]
    initializers = {t.name for t in model.graph.initializer}
    return {
        "task": task,
        "labels": labels or [],
        "max_length": max_length or config.get("max_position_embeddings"),
        "input_names": [i.name for i in model.graph.input if i.name not in initializers],
        "output_names": [o.name for o in model.graph.output],
        "model_type": config.get("model_type"),
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "edgeslim_version": __version__,
        "recipe": recipe_name,
        "recipe_hash": recipe_hash,
    }


def write_metadata(onnx_path: Path, metadata: dict[str, Any]) -> None:
    """Store ``metadata`` in the model's ``metadata_props`` (key ``edgeslim.<name>``, value JSON)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)  # external tensors keep pointing at their file
    keep = [p for p in model.metadata_props if not p.key.startswith(METADATA_PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in metadata.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = METADATA_PREFIX + key, json.dumps(value)
    onnx.save(model, str(onnx_path))


def read_metadata(onnx_path: Path) -> dict[str, Any]:
    """The edgeslim metadata stored in an ONNX file's ``metadata_props`` (as onnxruntime reports it)."""
    props = open_session(onnx_path).get_modelmeta().custom_metadata_map
    return {key[len(METADATA_PREFIX):]: json.loads(value) for key, value in props.items() if key.startswith(METADATA_PREFIX)}


def sample_feeds(onnx_path: Path, tokenizer, text: str = SAMPLE_TEXT) -> dict[str, np.ndarray]:
    """Inputs for one tokenized text, completed with position ids and an empty KV cache when needed."""
    from edgeslim.export.parity import onnx_feeds

    enc = tokenizer([text], return_tensors="np")
    arrays = {key: np.asarray(value, dtype=np.int64) for key, value in enc.items()}
    return onnx_feeds(open_session(onnx_path), arrays)


# Tokenizer in the graph -----------------------------------------------------------------------

def build_tokenizer_model(onnx_path: Path, tokenizer, out_path: Path, max_length: int | None) -> dict[str, Any]:
    """Write a model that takes one raw string (input ``text``, shape [1]) and returns the logits.

    The tokenizer graph comes from onnxruntime-extensions (``gen_processing_models``); its 1-D token
    tensors are unsqueezed to a batch of one and wired to the model's inputs. Running it needs the
    onnxruntime-extensions custom-op library (available for Android and iOS too).
    """
    import onnx
    from onnx import helper
    from onnxruntime_extensions import gen_processing_models

    kwargs = {"max_length": int(max_length)} if max_length else {}
    try:
        pre, _ = gen_processing_models(tokenizer, pre_kwargs=kwargs)
    except Exception as err:  # unsupported tokenizer classes raise assorted errors
        return {"written": False, "reason": f"onnxruntime-extensions cannot convert {type(tokenizer).__name__}: {str(err)[:120]}"}
    model = onnx.load(str(onnx_path), load_external_data=False)  # saved beside it: external data still resolves
    model_inputs = {i.name for i in model.graph.input}
    tok_outputs = [o.name for o in pre.graph.output]
    wanted = [name for name in TOKENIZER_OUTPUTS if name in model_inputs]
    if any(name not in tok_outputs for name in wanted) or not model_inputs <= set(TOKENIZER_OUTPUTS):
        return {"written": False, "reason": f"model inputs {sorted(model_inputs)} are not all produced by the tokenizer graph"}
    renamed = {name: f"tokenizer/{name}" for name in tok_outputs}
    pre_nodes = []
    for node in pre.graph.node:
        node = onnx.NodeProto.FromString(node.SerializeToString())
        node.output[:] = [renamed.get(o, o) for o in node.output]
        node.input[:] = [renamed.get(i, i) for i in node.input]
        pre_nodes.append(node)
    axes = helper.make_tensor("tokenizer/axes0", onnx.TensorProto.INT64, [1], [0])
    unsqueeze = [helper.make_node("Unsqueeze", [renamed[name], "tokenizer/axes0"], [name], name=f"tokenizer/unsqueeze_{name}")
                 for name in wanted]
    graph = model.graph
    text_input = pre.graph.input[0]
    nodes = pre_nodes + unsqueeze + list(graph.node)
    kept_inputs = [i for i in graph.input if i.name not in wanted]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.input[:]
    graph.input.extend([text_input] + kept_inputs)
    graph.initializer.extend(list(pre.graph.initializer) + [axes])
    domains = {o.domain for o in model.opset_import}
    for opset in pre.opset_import:
        if opset.domain not in domains and opset.domain not in ("", "ai.onnx"):
            model.opset_import.append(opset)
    onnx.save(model, str(out_path))
    return {"written": True, "file": out_path.name, "input": text_input.name, "max_length": max_length,
            "needs": "onnxruntime-extensions custom-op library", "size_bytes": out_path.stat().st_size}


def run_tokenizer_model(path: Path, text: str) -> list[np.ndarray]:
    """Outputs of ``model_with_tokenizer.onnx`` for one raw string."""
    session = open_session(path, extensions=True)
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.array([text])})


# The stage -------------------------------------------------------------------------------------

def genai_entry(out_dir: Path, log) -> dict[str, Any]:
    """``genai_config.json`` for onnxruntime-genai, or why the decoder cannot have one."""
    from edgeslim.export.genai import write_genai_config

    try:
        entry = write_genai_config(out_dir)
    except EdgeslimError as exc:
        return {"written": False, "reason": str(exc)}
    log("wrote genai_config.json (onnxruntime-genai)")
    return entry


def build_bundle(src: Path, out_dir: Path, task: str, config: BundleConfig, labels: list[str] | None = None,
                 max_length: int | None = None, recipe_hash: str | None = None, recipe_name: str | None = None,
                 figures: dict[str, Any] | None = None, log=lambda message: None,
                 provenance: dict[str, Any] | None = None, lineage: list[Artifact] | None = None,
                 texts: list[str] | None = None) -> dict[str, Any]:
    """Build the bundle from the ONNX folder ``src`` into ``out_dir``; return the manifest entries.
    ``provenance`` (the teacher and the data it was distilled on) goes into the metadata and card;
    ``lineage`` (the input artifact and its ancestors) and ``texts`` (real inputs to compare on) are
    what ``config.fixed_shape`` needs."""
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    copy_model_folder(src, out_dir)
    tokenizer = padding_tokenizer(AutoTokenizer.from_pretrained(out_dir))
    metadata = {**bundle_metadata(out_dir, task, labels, max_length, recipe_hash, recipe_name), **(provenance or {})}
    if config.title:
        metadata["title"] = config.title
    write_metadata(out_dir / ONNX_FILE, metadata)
    entries: dict[str, Any] = {"metadata": metadata}
    feeds = sample_feeds(out_dir / ONNX_FILE, tokenizer)
    if config.ort_format:
        log("converting to ORT format (fixed optimizations)")
        entries["ort"] = ort_format_files(out_dir, config.ort_target_platform, feeds, log)
    if config.tokenizer_in_graph and task == "text-classification":
        log("building model_with_tokenizer.onnx")
        entries["tokenizer_in_graph"] = build_tokenizer_model(out_dir / ONNX_FILE, tokenizer,
                                                              out_dir / TOKENIZER_MODEL_FILE, metadata["max_length"])
    elif config.tokenizer_in_graph:
        entries["tokenizer_in_graph"] = {"written": False, "reason": "only text-classification bundles take raw strings"}
    if task == "causal-lm":
        entries["genai"] = genai_entry(out_dir, log)
    if config.fixed_shape:
        entries["fixed_shape"] = fixed_shape_entry(lineage or [], out_dir, task, tokenizer, config,
                                                   config.fixed_length or metadata["max_length"], texts, log)
    if config.mobile_check:
        log("checking mobile usability (NNAPI, CoreML)")
        entries["mobile_usability"] = mobile_usability(out_dir / ONNX_FILE)
    sidecar = {**metadata, "files": sorted(p.name for p in out_dir.iterdir() if p.is_file()),
               "mobile_usability": entries.get("mobile_usability")}
    if "fixed_shape" in entries:
        sidecar["fixed_shape"] = {key: value for key, value in entries["fixed_shape"].items() if key != "operator_sets"}
    atomic_write_json(out_dir / METADATA_FILE, sidecar)
    entries["figures"] = {"size_bytes": onnx_size_bytes(out_dir / ONNX_FILE), **(figures or {})}
    if entries.get("ort", {}).get("written"):
        entries["figures"]["ort_size_bytes"] = entries["ort"]["size_bytes"]
    write_model_card(out_dir, entries["figures"])
    return entries


def fixed_shape_entry(lineage: list[Artifact], out_dir: Path, task: str, tokenizer, config: BundleConfig,
                      length: int, texts: list[str] | None, log) -> dict[str, Any]:
    """``model_fixed.ort`` from the torch model the release was exported from, compared with that export."""
    from edgeslim.export.fixed_shape import build_fixed_shape

    kinds = [artifact.kind for artifact in lineage]
    if "torch" not in kinds or kinds.index("torch") == 0:
        raise EdgeslimError("bundle.fixed_shape needs the torch model the release was exported from, and no stage "
                            "folder before the export holds it; rerun the recipe's stages, or set bundle.fixed_shape: false")
    torch_model = lineage[kinds.index("torch")]
    dynamic = lineage[kinds.index("torch") - 1]  # the export of that torch model: fp32, dynamic shapes
    samples = [SAMPLE_TEXT] + list(texts or [])
    return build_fixed_shape(torch_model.path, dynamic.onnx_path, out_dir, task, tokenizer, samples, length,
                             config.fixed_atol, config.ort_target_platform, log)


def provenance(recipe) -> dict[str, Any]:
    """Where the release comes from, for its metadata and model card: the teacher and the data."""
    teacher = getattr(recipe, "teacher", None)
    data = getattr(recipe, "data", None)
    if teacher is None or data is None:
        return {}
    base = teacher.source or f"built from a {teacher.build.get('model_type')} config"
    return {"base_model": base, "dataset": data.source, "eval_examples": data.eval_size}


def run(config: BundleConfig, artifact: Artifact, ctx) -> Artifact:
    """Turn the input ONNX artifact into the release bundle in ``ctx.out_dir``."""
    data = ctx.data
    labels = list(data.labels) if data is not None and getattr(data, "labels", None) else None
    max_length = getattr(data, "max_length", None) if data is not None else None
    fingerprint = getattr(ctx.recipe, "fingerprint", None)
    recipe_hash = fingerprint() if callable(fingerprint) else None
    upstream = (artifact.manifest or {}).get("metrics", {})
    figures = {key: upstream[key] for key in ("accuracy", "perplexity", "agreement", "parity_max_abs") if key in upstream}
    texts = [example.text for example in data.eval[:FIXED_SHAPE_TEXTS]] if data is not None else []
    entries = build_bundle(artifact.path, ctx.out_dir, ctx.task, config, labels, max_length, recipe_hash,
                           getattr(ctx.recipe, "name", None), figures, log=ctx.log, provenance=provenance(ctx.recipe),
                           lineage=list(artifact.lineage()) if config.fixed_shape else None, texts=texts)
    metrics = {"size_bytes": entries["figures"]["size_bytes"]}
    nondeterministic = {}
    if entries.get("ort", {}).get("written"):
        metrics["ort_size_bytes"] = entries["ort"]["size_bytes"]
        metrics["ort_max_abs_vs_onnx"] = entries["ort"]["max_abs_vs_onnx"]
        nondeterministic[ORT_FILE] = ORT_NONDETERMINISM
    if entries.get("fixed_shape", {}).get("written"):
        metrics["fixed_max_abs_vs_dynamic"] = entries["fixed_shape"]["parity"]["max_abs_vs_dynamic"]
        nondeterministic[FIXED_ORT_FILE] = ORT_NONDETERMINISM
    return Artifact(ctx.out_dir, "bundle", {"metrics": metrics, "nondeterministic_files": nondeterministic,
                                            **{k: v for k, v in entries.items() if k != "figures"}})
