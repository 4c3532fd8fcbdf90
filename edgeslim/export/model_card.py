"""The bundle's model card (``README.md``): Hugging Face Hub front matter, what the model is for and
is not, where it comes from, how it was measured, and the code that runs it in Python (Optimum,
onnxruntime), on Android (Kotlin, onnxruntime-android) and on iOS (Swift, onnxruntime-objc).

Everything comes from the bundle's ``edgeslim.json`` and the figures the caller passes: the bundle
stage writes the card with what it knows, the run writes it again with the benchmark matrix's figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeslim.artifacts import ONNX_FILE, atomic_write_text, read_json
from edgeslim.export.bundle_files import (CARD_FILE, FIXED_OPERATORS_FILE, FIXED_ORT_FILE, GENAI_FILE, METADATA_FILE,
                                          OPERATORS_FILE, ORT_FILE, TOKENIZER_MODEL_FILE)

FIGURES_START = "<!-- edgeslim:figures -->"
FIGURES_END = "<!-- /edgeslim:figures -->"
PIPELINE_TAGS = {"text-classification": "text-classification", "causal-lm": "text-generation"}


def write_model_card(bundle_dir: Path, figures: dict[str, Any]) -> Path:
    """(Re)write the bundle's ``README.md`` from ``edgeslim.json`` and the measured ``figures``
    (a name -> value, or -> {key: value} for one row per key, e.g. per device)."""
    bundle_dir = Path(bundle_dir)
    meta = read_json(bundle_dir / METADATA_FILE)
    files = [name for name in (ONNX_FILE, ORT_FILE, OPERATORS_FILE, FIXED_ORT_FILE, FIXED_OPERATORS_FILE,
                                TOKENIZER_MODEL_FILE, GENAI_FILE, "config.json",
                                "tokenizer.json", METADATA_FILE) if (bundle_dir / name).exists()]
    lines = front_matter(meta, figures) + [f"# {meta.get('title') or meta.get('recipe') or 'edgeslim model'}", ""]
    lines += about(meta) + interface(meta) + ["", "## Files", ""] + [f"- `{name}`" for name in files]
    lines += usage(meta, bundle_dir) + mobile_providers(meta) + fixed_shape_section(meta)
    lines += [FIGURES_START, "## Measured figures", ""] + _figure_lines(figures) + [FIGURES_END, ""]
    path = bundle_dir / CARD_FILE
    atomic_write_text(path, "\n".join(lines))
    return path


def front_matter(meta: dict[str, Any], figures: dict[str, Any]) -> list[str]:
    """Hub metadata: the license is the teacher's to state (``other`` until the publisher sets it)."""
    lines = ["---", "license: other", "library_name: onnxruntime",
             f"pipeline_tag: {PIPELINE_TAGS.get(meta.get('task'), meta.get('task'))}",
             "tags: [onnx, edgeslim, " + ("int4" if "int4" in str(meta.get("recipe")) else "quantized") + "]"]
    if hub_id(meta.get("base_model")):
        lines.append(f"base_model: {meta['base_model']}")
    if hub_id(meta.get("dataset")):
        lines.append(f"datasets: ['{meta['dataset']}']")
    metric = "perplexity" if meta.get("task") == "causal-lm" else "accuracy"
    lines.append(f"metrics: [{metric}]")
    return lines + ["---", ""]


def hub_id(value) -> bool:
    """Whether ``value`` names something on the Hub (``org/name``), not a local path or a package."""
    text = str(value or "")
    return text.count("/") == 1 and not text.startswith(("/", ".", "~", "pkg://")) and " " not in text


def about(meta: dict[str, Any]) -> list[str]:
    task = meta.get("task")
    kind = "text classifier" if task == "text-classification" else "causal language model"
    return [
        f"ONNX {kind} built by edgeslim {meta.get('edgeslim_version')} (recipe `{meta.get('recipe')}`, hash "
        f"`{meta.get('recipe_hash')}`): distilled, compressed and quantized from `{meta.get('base_model') or 'its teacher'}` "
        "for on-device inference, and gated on the figures below.", "",
        "## Intended use", "",
        (f"Classifying short texts into {', '.join(meta.get('labels') or [])} on phones, boards and edge servers, "
         "where the teacher is too large or slow." if task == "text-classification" else
         "Short greedy or sampled continuations on devices where the teacher is too large or slow."), "",
        "## Limitations", "",
        "- It is as good as its teacher on the data it was evaluated on, at best; outside that domain nothing was measured.",
        "- The figures below hold for the devices, threads and sequence lengths listed; other hardware needs its own measurement.",
        f"- Inputs longer than {meta.get('max_length')} tokens are truncated.", "",
        "## Training and evaluation data", "",
        f"- teacher: `{meta.get('base_model') or 'see the recipe'}`",
        f"- data: `{meta.get('dataset') or 'see the recipe'}` (a fixed split: the eval examples were never trained on)", "",
    ]


def interface(meta: dict[str, Any]) -> list[str]:
    lines = ["## Inputs and outputs", "",
             f"- inputs: {', '.join(f'`{n}`' for n in meta.get('input_names', []))}",
             f"- outputs: {', '.join(f'`{n}`' for n in meta.get('output_names', []))}",
             f"- max length: {meta.get('max_length')} tokens"]
    if meta.get("labels"):
        lines.append(f"- labels (index order): {', '.join(f'`{label}`' for label in meta['labels'])}")
    return lines


def usage(meta: dict[str, Any], bundle_dir: Path) -> list[str]:
    """Runnable code: Optimum and onnxruntime in Python, onnxruntime-genai for LMs, Kotlin and Swift
    for ``model.ort`` on Android and iOS."""
    task = meta.get("task")
    loader = "ORTModelForCausalLM" if task == "causal-lm" else "ORTModelForSequenceClassification"
    has_cache = any(name.startswith("past_key_values") for name in meta.get("input_names", []))
    no_cache = ", use_cache=False" if task == "causal-lm" and not has_cache else ""
    lines = ["", "## Use", "", "With Optimum:", "", "```python", f"from optimum.onnxruntime import {loader}",
             "from transformers import AutoTokenizer", "",
             f'model = {loader}.from_pretrained("path/to/this/folder"{no_cache})',
             'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")']
    if task == "causal-lm":
        lines += ['ids = tokenizer("The capital of France is", return_tensors="pt")',
                  "print(tokenizer.decode(model.generate(**ids, max_new_tokens=20)[0]))", "```", ""]
    else:
        lines += ['inputs = tokenizer("what a lovely day", return_tensors="pt")',
                  "print(model.config.id2label[int(model(**inputs).logits.argmax())])", "```", "",
                  "With onnxruntime alone:", "", "```python", "import numpy as np", "import onnxruntime as ort",
                  "from transformers import AutoTokenizer", "",
                  'session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])',
                  'tokenizer = AutoTokenizer.from_pretrained(".")',
                  'encoded = tokenizer("what a lovely day", return_tensors="np")',
                  "wanted = {i.name for i in session.get_inputs()}",
                  "logits = session.run(None, {k: v.astype(np.int64) for k, v in encoded.items() if k in wanted})[0]",
                  f"print({meta.get('labels') or []}[int(logits.argmax())])", "```", ""]
    if (bundle_dir / GENAI_FILE).exists():
        lines += ["With onnxruntime-genai (what mobile LLM apps run; see docs/llm.md in edgeslim):", "", "```python",
                  "import onnxruntime_genai as og", "", 'model = og.Model(".")', "tokenizer = og.Tokenizer(model)",
                  "params = og.GeneratorParams(model)", "params.set_search_options(max_length=64)",
                  "generator = og.Generator(model, params)",
                  'generator.append_tokens(tokenizer.encode("The capital of France is"))',
                  "while not generator.is_done():", "    generator.generate_next_token()",
                  "print(tokenizer.decode(generator.get_sequence(0)))", "```", ""]
    if (bundle_dir / ORT_FILE).exists():
        lines += mobile_snippets(meta)
    if (bundle_dir / TOKENIZER_MODEL_FILE).exists():
        lines += ["`model_with_tokenizer.onnx` takes one raw string (input `text`) and needs the "
                  "onnxruntime-extensions custom-op library.", ""]
    return lines


def mobile_snippets(meta: dict[str, Any]) -> list[str]:
    """Loading ``model.ort`` in an Android (Kotlin) and an iOS (Swift) app; token ids come from the
    app's tokenizer (or ``model_with_tokenizer.onnx`` with onnxruntime-extensions)."""
    inputs = [name for name in meta.get("input_names", []) if not name.startswith("past_")]
    kotlin_feeds = ", ".join(f'"{name}" to OnnxTensor.createTensor(env, {name})' for name in inputs)
    swift_feeds = ", ".join(f'"{name}": {name}Tensor' for name in inputs)
    return [
        "On Android and iOS load `model.ort` with onnxruntime-mobile (`required_operators.config` lists the "
        "operators a reduced onnxruntime build needs).", "",
        "Android (Kotlin, `com.microsoft.onnxruntime:onnxruntime-android`):", "", "```kotlin",
        "import ai.onnxruntime.OnnxTensor", "import ai.onnxruntime.OrtEnvironment", "",
        "val env = OrtEnvironment.getEnvironment()",
        'val session = env.createSession(context.assets.open("model.ort").readBytes())',
        "// each input: Array(1) { LongArray(length) } of token ids from the app's tokenizer",
        f"val outputs = session.run(mapOf({kotlin_feeds}))",
        "val logits = outputs[0].value as Array<FloatArray>", "```", "",
        "iOS (Swift, `onnxruntime-objc` / the onnxruntime Swift package):", "", "```swift",
        "import onnxruntime_objc", "",
        "let env = try ORTEnv(loggingLevel: .warning)",
        'let path = Bundle.main.path(forResource: "model", ofType: "ort")!',
        "let session = try ORTSession(env: env, modelPath: path, sessionOptions: ORTSessionOptions())",
        "// each input: an ORTValue of int64 token ids, shape [1, length]",
        f"let outputs = try session.run(withInputs: [{swift_feeds}], outputNames: [\"{(meta.get('output_names') or ['logits'])[0]}\"],"
        " runOptions: nil)", "```", "",
    ]


def mobile_providers(meta: dict[str, Any]) -> list[str]:
    usability = meta.get("mobile_usability")
    if not usability:
        return []
    lines = ["## Mobile execution providers", "", "| provider | verdict | supported nodes | partitions | unsupported ops |",
             "|---|---|---|---|---|"]
    for ep, entry in usability.get("providers", {}).items():
        lines.append(f"| {ep} | {entry['verdict']} | {entry['supported_nodes']}/{entry['nodes']} | "
                     f"{entry['partitions']} | {', '.join(entry['unsupported_ops']) or '-'} |")
    return lines + ["", f"Recommendation: {usability.get('recommendation')}.", ""]


def fixed_shape_section(meta: dict[str, Any]) -> list[str]:
    """``model_fixed.ort``: what it takes, how close it is to the dynamic model, and the code that puts
    it on NNAPI (Android) or CoreML (iOS)."""
    fixed = meta.get("fixed_shape")
    if not fixed or not fixed.get("written"):
        return []
    length, parity = fixed["sequence_length"], fixed["parity"]
    verdicts = ", ".join(f"{ep} {entry['verdict']} ({entry['supported_nodes']}/{entry['nodes']} nodes, "
                         f"{entry['partitions']} partition{'s' if entry['partitions'] != 1 else ''})"
                         for ep, entry in fixed["mobile_usability"]["providers"].items())
    return [
        "## Mobile accelerators: `model_fixed.ort`", "",
        f"An fp32 model for NNAPI and CoreML: batch 1, exactly {length} tokens (pad with the tokenizer's pad id and "
        f"mask 0, truncate longer texts), inputs `input_ids` and `attention_mask` as **int32** [1, {length}]. "
        f"Its largest logit difference from the dynamic fp32 export was {parity['max_abs_vs_dynamic']:.2g} on "
        f"{parity['texts']} texts (argmax agreement {parity['argmax_agreement']:.0%}; GELU is its tanh form).", "",
        f"onnxruntime's mobile usability check: {verdicts}. Measure it against `model.ort` on the CPU EP on your "
        "phones: the accelerator wins only when the whole graph stays on it.", "",
        "```kotlin",
        "val options = OrtSession.SessionOptions().apply { addNnapi() }",
        'val session = env.createSession(context.assets.open("model_fixed.ort").readBytes(), options)',
        f"// inputs: OnnxTensor.createTensor(env, IntBuffer.wrap(ids), longArrayOf(1, {length})) for each name",
        "```", "",
        "```swift",
        "let options = try ORTSessionOptions()",
        "try options.appendCoreMLExecutionProvider(with: ORTCoreMLExecutionProviderOptions())",
        'let path = Bundle.main.path(forResource: "model_fixed", ofType: "ort")!',
        "let session = try ORTSession(env: env, modelPath: path, sessionOptions: options)",
        "```", "",
    ]


def _figure_lines(figures: dict[str, Any]) -> list[str]:
    if not figures:
        return ["No figures measured yet."]
    lines = ["| figure | value |", "|---|---|"]
    for name, value in figures.items():
        if isinstance(value, dict):
            for key, inner in value.items():
                lines.append(f"| {name} / {key} | {_fmt(inner)} |")
        else:
            lines.append(f"| {name} | {_fmt(value)} |")
    return lines


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
