"""``edgeslim init MODEL DATA``: inspect a model and a data file, write a commented starting recipe.

The model (a folder written by ``save_pretrained``, ``pkg://``, a GGUF file, or a hub id with
``--allow-network``) gives the task (a causal-LM head, else classification) and its depth; the data
file (csv, tsv, jsonl, parquet, or plain text) gives the text column (the string column with the
longest values), the label column (a column with few distinct values, preferring the usual names)
and its labels. The recipe uses the defaults that worked on the built-in recipes, says in comments
what it found and why it chose each value, and passes ``edgeslim check`` unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeslim.errors import EdgeslimError, first_line

LABEL_NAMES = ("label", "labels", "sentiment", "class", "category", "target", "intent", "emotion", "topic")
MAX_LABELS = 50
TRAIN_ROWS = 5000  # training rows a first run uses at most (distillation time grows with them)


@dataclass
class ModelFacts:
    source: str
    gguf_file: str | None
    model_type: str
    task: str
    layers: int | None
    has_classifier: bool
    notes: list[str] = field(default_factory=list)


@dataclass
class DataFacts:
    source: str
    format: str
    encoding: str
    text_column: str
    label_column: str | None
    labels: list[str]
    rows: int
    notes: list[str] = field(default_factory=list)


def inspect_model(model: str, allow_network: bool = False) -> ModelFacts:
    """What the recipe needs to know about the teacher, from its config alone (no weights read)."""
    from edgeslim.model_shape import read_config_json
    from edgeslim.sources import resolve_model_source
    from edgeslim.teacher import gguf_config_fields

    path = Path(resolve_model_source(model, Path.cwd()))
    gguf = _gguf_file(path)
    if gguf is not None:
        fields = gguf_config_fields(str(gguf.parent), gguf.name)
        return ModelFacts(model, None if gguf == path else gguf.name, fields.get("model_type", "?"), "causal-lm",
                          fields.get("num_hidden_layers"), False, [f"a GGUF file ({gguf.name}): a causal LM"])
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise EdgeslimError(f"model '{model}' is a folder without config.json or a .gguf file; give a folder "
                                "written by save_pretrained, or a GGUF file")
        fields = read_config_json(path)
    elif path.exists():
        raise EdgeslimError(f"model '{model}' is a file; give the model's folder (config.json and weights) or a .gguf file")
    else:
        fields = _hub_config(model, allow_network)
    architectures = fields.get("architectures") or []
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    classifier = any(a.endswith("ForSequenceClassification") for a in architectures)
    layers = next((fields[k] for k in ("num_hidden_layers", "n_layer", "n_layers", "num_layers") if k in fields), None)
    note = f"model type {fields.get('model_type', '?')}, {layers} layers, architectures {', '.join(architectures) or 'none'}"
    return ModelFacts(model, None, fields.get("model_type", "?"), "causal-lm" if causal else "text-classification",
                      layers, classifier, [note])


def _gguf_file(path: Path) -> Path | None:
    """``path`` itself when it is a .gguf file, the first .gguf file of a folder, else ``None``."""
    if path.is_file() and path.suffix == ".gguf":
        return path
    return next(iter(sorted(path.glob("*.gguf"))), None) if path.is_dir() else None


def _hub_config(model: str, allow_network: bool) -> dict[str, Any]:
    if not allow_network:
        raise EdgeslimError(f"model '{model}' is neither a local folder nor a file; if it is a hub id, pass "
                            "--allow-network to read its config")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model).to_dict()
    except (OSError, ValueError) as exc:
        raise EdgeslimError(f"model '{model}': the hub could not give its config ({first_line(exc)})") from None


def inspect_data(data: str, task: str) -> DataFacts:
    """The text column, the label column and the labels of a data file (read with the recipe's reader)."""
    from edgeslim.data import FORMATS, read_frame
    from edgeslim.sources import resolve_path

    path = resolve_path(data, Path.cwd())
    if path.is_dir():
        raise EdgeslimError(f"data '{data}' is a folder; give the data file inside it (csv, jsonl, parquet or text)")
    if not path.is_file():
        raise EdgeslimError(f"data '{data}' does not exist")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise EdgeslimError(f"data '{path.name}': cannot tell the format from its suffix; use .csv, .tsv, .jsonl, "
                            ".parquet, .txt or a .zip of them")
    encoding = "utf-8"
    try:
        if fmt != "zip":  # a zip's bytes are compressed; its members are read as utf-8
            path.read_bytes()[:1 << 20].decode("utf-8")
    except UnicodeDecodeError:
        encoding = "latin-1"
    frame = read_frame(path, fmt, _Reading(encoding))
    if fmt == "text":
        return DataFacts(data, fmt, encoding, "text", None, [], len(frame), ["plain text: one example per line"])
    texts = [c for c in frame.columns if frame[c].map(lambda v: isinstance(v, str)).mean() > 0.9]
    if not texts:
        raise EdgeslimError(f"data '{path.name}' has no text column (columns: {', '.join(map(str, frame.columns))})")
    text_column = max(texts, key=lambda c: frame[c].astype(str).str.len().mean())
    notes = [f"{len(frame)} rows; text column '{text_column}' (the string column with the longest values)"]
    label_column, labels = None, []
    if task == "text-classification":
        label_column = _label_column(frame, text_column)
        if label_column is None:
            raise EdgeslimError(f"data '{path.name}': no column looks like labels (at most {MAX_LABELS} distinct "
                                f"values besides '{text_column}'); add a label column, or use a causal LM")
        labels = sorted(str(v) for v in frame[label_column].dropna().unique())
        notes.append(f"label column '{label_column}' with {len(labels)} labels")
    return DataFacts(data, fmt, encoding, str(text_column), label_column, labels, len(frame), notes)


@dataclass
class _Reading:
    """The reader's view of a data section while inspecting (only what ``_read_frame`` uses)."""

    encoding: str
    text_column: str = "text"


def _label_column(frame, text_column: str) -> str | None:
    candidates = [c for c in frame.columns if c != text_column and 2 <= frame[c].nunique() <= MAX_LABELS]
    if not candidates:
        return None
    named = [c for c in candidates if str(c).lower() in LABEL_NAMES]
    return str(named[0] if named else min(candidates, key=lambda c: frame[c].nunique()))


def recipe_name(model: str, data: str) -> str:
    """``<model>-<data>`` from their names (a ``pkg://`` source by its package), as a folder name."""
    def stem(value: str) -> str:
        name = value.split("/")[2] if value.startswith("pkg://") else Path(value.rstrip("/")).stem
        return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()

    return f"{stem(model) or 'model'}-{stem(data) or 'data'}"[:60]


def render_recipe(model: ModelFacts, data: DataFacts, devices: list[str], name: str) -> str:
    """The commented recipe text."""
    eval_size = max(1, min(1000, data.rows // 5))
    lines = [f"# Written by 'edgeslim init' from {model.source} and {data.source}.",
             *[f"#   model: {note}" for note in model.notes], *[f"#   data:  {note}" for note in data.notes],
             "# Check it with 'edgeslim check', run it with 'edgeslim run'; docs/recipe.md explains every key.",
             f"name: {name}", f"task: {model.task}", "seed: 0", "teacher:", f"  source: {_quote(model.source)}"]
    if model.gguf_file:
        lines.append(f"  gguf_file: {_quote(model.gguf_file)}")
    if model.task == "text-classification" and not model.has_classifier:
        lines += ["  finetune:                 # the model has no classification head yet: train one first",
                  "    epochs: 1", "    lr: 0.0001", "    batch_size: 32"]
    lines += ["data:", f"  source: {_quote(data.source)}"]
    if data.format == "text":
        lines += ["  format: text", "  label_column: null"]
    if data.encoding != "utf-8":
        lines.append(f"  encoding: {data.encoding}              # the file is not valid UTF-8")
    if data.format != "text":
        lines.append(f"  text_column: {_quote(data.text_column)}")
    if data.label_column:
        lines += [f"  label_column: {_quote(data.label_column)}", f"  labels: [{', '.join(_quote(l) for l in data.labels)}]"]
    if data.rows - eval_size > TRAIN_ROWS:
        lines.append(f"  train_size: {TRAIN_ROWS}          # of {data.rows - eval_size} rows: keeps a first run short; raise it")
    lines += [f"  eval_size: {eval_size}               # held out: every artifact is scored on the same rows",
              f"  max_length: {128 if model.task == 'text-classification' else 64}"]
    lines += _stages(model)
    lines += [f"devices: [{', '.join(devices)}]", "budgets:"]
    if model.task == "text-classification":
        lines += ["  accuracy_drop: 0.02        # the release may lose at most 2 points against the teacher"]
    else:
        lines += ["  size_mb: 1000              # set the size your app can ship"]
    lines += ["measure:", "  samples: 32", "  runs: 100"]
    if model.task == "causal-lm":
        lines += ["release: best              # publish the best candidate (it or a teacher baseline) that passes"]
    return "\n".join(lines) + "\n"


def _stages(model: ModelFacts) -> list[str]:
    if model.task == "causal-lm":
        return ["stages:                     # plain INT4 of the teacher: the strong baseline to start from",
                "  - export: {}", "  - quantize:", "      mode: weight_only", "      bits: 4", "      block_size: 32",
                "      accuracy_level: 4", "  - bundle:", "      ort_format: false", "      mobile_check: false"]
    every = 2 if (model.layers or 0) >= 4 else None
    distill = [f"      layers: {{every: {every}}}     # keep every 2nd of the teacher's {model.layers} layers"] if every \
        else ["      layers: null           # the teacher is shallow: keep all its layers"]
    return ["stages:", "  - distill:", *distill, "      epochs: 2", "      lr: 0.0002", "      batch_size: 32",
            "  - export: {}", "  - quantize:", "      candidates:",
            "        - {name: dynamic-int8, mode: dynamic}",
            "        - {name: dynamic-int8-per-channel, mode: dynamic, per_channel: true}",
            "      max_accuracy_drop: 0.02", "  - bundle: {}"]


def _quote(value: str) -> str:
    """``value`` as a YAML string: bare where YAML reads it back as the same string, else JSON-quoted."""
    import json

    plain = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./:+-]*", value) and value.lower() not in YAML_WORDS
    return value if plain else json.dumps(value)


#: Bare words YAML reads as something other than a string.
YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}
