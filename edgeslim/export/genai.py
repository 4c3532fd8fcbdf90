"""``genai_config.json`` for a causal-LM bundle, so onnxruntime-genai (the runtime mobile LLM apps
use) loads the bundle folder as it is: the decoder's file, its input and output names (Optimum's KV-
cache layout), the sizes of its heads, and greedy search by default.

An app then generates with a few lines (see docs/llm.md)::

    import onnxruntime_genai as og
    model = og.Model("path/to/bundle")
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=64)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt_ids)
    while not generator.is_done():
        generator.generate_next_token()
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeslim.artifacts import ONNX_FILE, atomic_write_json
from edgeslim.errors import EdgeslimError
from edgeslim.export.bundle_files import GENAI_FILE
from edgeslim.families import FAMILIES, genai_runs
from edgeslim.model_shape import ModelShape, read_config_json


def genai_config(folder: Path) -> dict[str, Any]:
    """The configuration onnxruntime-genai needs for the decoder ``folder/model.onnx`` (with its
    ``config.json``); an :class:`EdgeslimError` when the graph is not a KV-cache decoder it can run."""
    import onnx

    folder = Path(folder)
    # with the standard names filled in from an architecture's own (GPT-2's n_head, n_embd, n_layer, ...)
    config = vars(ModelShape.from_dict(read_config_json(folder)))
    model_type = config.get("model_type")
    if not genai_runs(model_type):
        raise EdgeslimError(f"onnxruntime-genai 0.18 does not run model type '{model_type}' (it runs "
                            f"{', '.join(t for t in FAMILIES if genai_runs(t))})")
    graph = onnx.load(str(folder / ONNX_FILE), load_external_data=False).graph
    inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    if "past_key_values.0.key" not in inputs or "present.0.key" not in outputs or "logits" not in outputs:
        raise EdgeslimError("onnxruntime-genai needs a decoder exported with its KV cache (past_key_values.N.key "
                            "inputs, present.N.key and logits outputs); export with the causal-LM task")
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    names = {"input_ids": "input_ids", "past_key_names": "past_key_values.%d.key",
             "past_value_names": "past_key_values.%d.value"}
    names.update({name: name for name in ("attention_mask", "position_ids") if name in inputs})
    generation = _generation_config(folder)
    eos = _first_id(generation.get("eos_token_id"), config.get("eos_token_id"), config.get("sep_token_id"),
                    config.get("pad_token_id"))
    return {
        "model": {
            "type": config["model_type"],
            "bos_token_id": _first_id(generation.get("bos_token_id"), config.get("bos_token_id"), eos),
            "eos_token_id": eos,
            "pad_token_id": _first_id(config.get("pad_token_id"), eos),
            "vocab_size": int(config["vocab_size"]),
            "context_length": int(config.get("max_position_embeddings", 2048)),
            "decoder": {
                "filename": ONNX_FILE,
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "head_size": int(config.get("head_dim") or hidden // heads),
                "hidden_size": hidden,
                "num_attention_heads": heads,
                "num_key_value_heads": int(config.get("num_key_value_heads") or heads),
                "num_hidden_layers": int(config["num_hidden_layers"]),
                "inputs": names,
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "num_beams": 1, "max_length": int(config.get("max_position_embeddings", 2048)),
                   "min_length": 0, "temperature": 1.0, "top_k": 1, "top_p": 1.0, "repetition_penalty": 1.0,
                   "past_present_share_buffer": False, "early_stopping": True, "length_penalty": 1.0,
                   "no_repeat_ngram_size": 0, "num_return_sequences": 1, "diversity_penalty": 0.0},
    }


def write_genai_config(folder: Path) -> dict[str, Any]:
    """Write ``genai_config.json`` beside the decoder; the manifest entry saying so."""
    atomic_write_json(Path(folder) / GENAI_FILE, genai_config(folder))
    return {"written": True, "file": GENAI_FILE, "runtime": "onnxruntime-genai"}


def _first_id(*candidates):
    """The first token id given (onnxruntime-genai needs a number where a config may say null)."""
    return next((c for c in candidates if c is not None), 0)


def _generation_config(folder: Path) -> dict[str, Any]:
    path = folder / "generation_config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
