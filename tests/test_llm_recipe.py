"""A causal-LM recipe end to end through the real CLI, on a tiny Llama written as a GGUF file:
GGUF teacher -> token-KD student -> ONNX with KV cache -> INT4 -> bundle -> matrix with perplexity,
greedy agreement, prefill latency, decode tokens/s and peak memory; and the shipped SmolLM2 recipes
load and pass their static checks."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import REPO, run_cli
from edgeslim.recipe import load_recipe
from _llm_models import SENTENCES, tiny_llama, train_tokenizer, write_gguf


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm-recipe")
    tokenizer = train_tokenizer(root / "tokenizer")
    write_gguf(tiny_llama(len(tokenizer), seed=2), tokenizer, root / "tiny.gguf", qtype="Q8_0")
    (root / "corpus.txt").write_text("\n".join(SENTENCES) + "\n")
    (root / "generated.txt").write_text("\n".join(s.lower() for s in SENTENCES[:6]) + "\n")
    recipe = {
        "name": "tiny-llm", "task": "causal-lm", "seed": 0,
        "teacher": {"source": "tiny.gguf"},
        "data": {"source": "corpus.txt", "format": "text", "label_column": None, "eval_size": 4, "max_length": 32,
                 "unlabeled": "generated.txt"},
        "stages": [
            {"distill": {"layers": {"every": 2}, "data": "labeled+unlabeled", "max_steps": 4, "batch_size": 4,
                         "checkpoint_every": 0, "losses": {"tokens": {"kind": "reverse_kl", "top_k": 16}}}},
            {"export": {"parity_batches": 1, "decode_steps": 1}},
            {"quantize": {"mode": "weight_only", "bits": 4, "block_size": 32, "quantize_embeddings": True,
                          "max_accuracy_drop": 1.0, "exclude_sensitive": False, "eval_limit": 4, "latency_runs": 2}},
            {"bundle": {"ort_format": False, "mobile_check": False}},
        ],
        "devices": ["x86-64-cpu"],
        "measure": {"samples": 2, "warmup": 1, "runs": 5},
    }
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    out = root / "run"
    result = run_cli("run", root / "recipe.yaml", "--out", out, "--quiet")
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return out, json.loads((out / "report" / "report.json").read_text())


def test_report_has_lm_metrics_for_every_artifact(llm_run):
    out, report = llm_run
    names = [a["name"] for a in report["artifacts"]]
    assert names[:4] == ["teacher", "teacher-fp32", "teacher-int8", "teacher-int4"]
    by_name = {a["name"]: a for a in report["artifacts"]}
    teacher_ppl = by_name["teacher"]["perplexity"]
    assert by_name["teacher-fp32"]["perplexity"] == pytest.approx(teacher_ppl, rel=1e-3)
    assert by_name["teacher-fp32"]["agreement"] == 1.0 and by_name["teacher"]["agreement"] == 1.0
    for artifact in report["artifacts"]:
        assert artifact["perplexity"] > 1.0 and 0.0 <= artifact["agreement"] <= 1.0 and artifact["params"] > 0
        cell = artifact["devices"]["x86-64-cpu"]
        if artifact["kind"] in ("onnx", "bundle"):
            assert cell["status"] == "measured", cell
            assert cell["latency_ms"]["n"] == 5 and cell["decode_tokens_per_s"] > 0
            assert cell["peak_memory_mb"] > 0
    release = by_name[report["release"]]
    assert release["stage"] == "bundle"
    assert release["size_bytes"] < by_name["teacher-fp32"]["size_bytes"]


def test_release_is_an_int4_decoder_with_kv_cache(llm_run):
    import onnx

    out, report = llm_run
    model = onnx.load(str(out / "model" / "model.onnx"), load_external_data=False)
    assert any(node.op_type == "MatMulNBits" for node in model.graph.node)
    assert any(i.name.startswith("past_key_values.") for i in model.graph.input)
    lookup = next(node for node in model.graph.node if node.op_type == "GatherBlockQuantized")
    head = [node for node in model.graph.node if node.op_type == "MatMulNBits" and node.input[1] == lookup.input[0]]
    assert len(head) == 1  # the tied table stored once: the lookup reads the head's 4-bit bytes


def test_the_summary_compares_decode_speed_for_a_language_model(llm_run):
    """A decoder's speed is its decode rate: the summary's speed column and ratio line say so, and
    the best baseline is the fastest decoder (plain INT4), not the fastest prompt."""
    from edgeslim.report.render import ratios
    from edgeslim.report.sections import summary_rows

    _, report = llm_run
    header, release, teacher, baseline = summary_rows(report)
    assert header[-2] == "x86-64-cpu decode tok/s" and teacher[-1] == "1.00x"
    cells = {a["name"]: a["devices"]["x86-64-cpu"] for a in report["artifacts"]}
    assert float(release[-2]) == pytest.approx(cells[release[1]]["decode_tokens_per_s"], abs=0.05)
    assert baseline[1] == max(("teacher-int8", "teacher-int4"), key=lambda n: cells[n]["decode_tokens_per_s"])
    assert any("decode" in line and "tokens/s" in line for line in ratios(report))


@pytest.mark.parametrize("name", ["smollm2-edge.yaml", "smollm2-edge-quick.yaml"])
def test_shipped_recipes_load(name):
    recipe = load_recipe(REPO / "recipes" / name)
    assert recipe.task == "causal-lm" and recipe.teacher.source.endswith(".gguf")
    assert [entry.name for entry in recipe.stages] == ["distill", "export", "quantize", "bundle"]
    data_dir = REPO / "recipes" / "smollm2"
    for file in ("corpus.txt", "prompts.txt", "generated.txt"):
        assert len((data_dir / file).read_text(encoding="utf-8").splitlines()) >= 40


def test_lm_report_holds_the_int4_baseline_the_floor_and_intervals(llm_run):
    """The plain INT4 teacher is always in a causal-LM matrix (a release candidate the student must
    not be dominated by), the unigram floor is recorded, and every perplexity has its interval."""
    out, report = llm_run
    by_name = {a["name"]: a for a in report["artifacts"]}
    int4 = by_name["teacher-int4"]
    assert int4["size_bytes"] < by_name["teacher-int8"]["size_bytes"] < by_name["teacher-fp32"]["size_bytes"]
    assert report["floor"]["kind"] == "unigram" and report["floor"]["perplexity"] > 1.0
    for artifact in report["artifacts"]:
        low, high = artifact["perplexity_interval"]
        assert low <= artifact["perplexity"] <= high
    from edgeslim.report.gate import evaluate_gate

    names = {c.budget for c in evaluate_gate(report)}
    assert {"floor.teacher", "floor.release", "dominance.teacher-int4"} <= names


def test_the_bundle_runs_in_onnxruntime_genai_and_generates_what_edgeslim_does(llm_run):
    """The LLM bundle carries genai_config.json: onnxruntime-genai (what mobile LLM apps run) loads
    the folder as it is, and its greedy tokens are edgeslim's own for the same prompts."""
    import numpy as np
    import onnxruntime_genai as og

    from edgeslim.targets.harness import Decoder, make_session

    out, report = llm_run
    bundle = out / "model"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["genai"]["written"] and (bundle / "genai_config.json").is_file()
    card = (bundle / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "import onnxruntime_genai as og" in card
    model = og.Model(str(bundle))
    ours = Decoder(make_session(bundle / "model.onnx", {"threads": 1}))
    eos = json.loads((bundle / "genai_config.json").read_text())["model"]["eos_token_id"]
    compared = 0
    for prompt in ([2, 5, 9, 11], [2, 17, 4, 30, 8], [2, 40, 41]):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + 8, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(np.array([prompt], dtype=np.int32))
        theirs = []
        while not generator.is_done():
            generator.generate_next_token()
            theirs.append(int(generator.get_next_tokens()[0]))
        expected = ours.greedy(np.array([prompt], dtype=np.int64), 8)
        cut = expected.index(eos) + 1 if eos in expected else len(expected)  # genai stops at end-of-sequence
        assert theirs == expected[:cut], (prompt, theirs, expected)
        compared += len(theirs)
    assert compared >= 3
