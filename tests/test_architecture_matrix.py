"""Every architecture of the families table through every stage: each stage runs, or ``edgeslim check``
refuses it in one line with the reason; and the support table in docs/compress.md (printed by
``bench/architectures.py``) says exactly that.

The check verdicts are computed for every type and stage (fast: no model is built). The runs take a
representative type of each layout through every stage it accepts (tiny configs, few steps); the
bench script runs all of them.
"""

from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import architectures as matrix  # noqa: E402

from edgeslim.families import FAMILIES  # noqa: E402

DOC = REPO / "docs" / "compress.md"
# One type per layout and per special case: BERT (the demo's), DistilBERT (transformers' prune_heads),
# GPT-2 (Conv1D projections, fused Q|K|V), Phi-3 (fused projections), OPT, DeBERTa-v2 and MPNet (heads go
# with hidden width; MPNet's shared head table), GPT-NeoX (fused QKV head by head), ALBERT (shared
# layers: layer selection and prune refused, lowrank by name).
RUN_TYPES = ["bert", "distilbert", "gpt2", "phi3", "opt", "deberta-v2", "mpnet", "gpt_neox", "albert"]


def documented_table() -> dict[str, dict[str, str]]:
    """The support table of docs/compress.md: model type -> stage -> 'runs' / 'refused: reason'."""
    lines = DOC.read_text().splitlines()
    start = lines.index(matrix.TABLE_START)
    end = lines.index(matrix.TABLE_END)
    rows, reasons = {}, {}
    for line in lines[start + 1:end]:
        if line.startswith("(") and ") " in line:
            number, reason = line[1:].split(") ", 1)
            reasons[number] = reason
        elif line.startswith("| ") and not line.startswith("| model type"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = dict(zip(matrix.STAGES, cells[1:]))
    for stages in rows.values():
        for stage, cell in stages.items():
            if cell.startswith("refused ("):
                stages[stage] = "refused: " + reasons[cell[len("refused ("):-1]]
    return rows


def test_the_documented_table_covers_every_type_and_stage():
    table = documented_table()
    assert sorted(table) == sorted(FAMILIES)
    assert all(list(stages) == list(matrix.STAGES) for stages in table.values())
    assert all(cell in ("runs",) or cell.startswith("refused: ") for stages in table.values() for cell in stages.values())


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_check_accepts_or_refuses_each_stage_as_documented(tmp_path, model_type):
    documented = documented_table()[model_type]
    for stage in matrix.STAGES:
        reason = matrix.check_stage(model_type, stage, tmp_path)
        assert (f"refused: {reason}" if reason else "runs") == documented[stage], (model_type, stage, reason)


@pytest.mark.parametrize("model_type", RUN_TYPES)
def test_every_accepted_stage_runs_and_its_outputs_reload(tmp_path, model_type):
    from edgeslim.compress.lowrank import load_factorized

    row = matrix.support(model_type, tmp_path / model_type)
    assert row["exit_code"] in (0, 1), row  # 1: a budget failed; the tiny model's figures do not matter here
    documented = documented_table()[model_type]
    assert row["stages"] == documented, row
    run = tmp_path / model_type / "run"
    task = matrix.recipe(model_type, [])["task"]
    for folder in sorted((run / "stages").glob("[0-9]*")):
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest["kind"] == "torch":  # teacher, distill, prune, lowrank, vocab: the folder reloads
            load_factorized(folder, task)
        if manifest["stage"] == "export":  # the stage fails when parity does not hold; it held with margin
            assert manifest["metrics"]["parity_max_abs"] <= 1e-3, manifest["metrics"]
    report = json.loads((run / "report" / "report.json").read_text())
    release = next(a for a in report["artifacts"] if a["name"] == report["release"])
    assert release["devices"]["x86-64-cpu"]["status"] == "measured", release
    if task == "causal-lm":
        assert_genai_as_documented(model_type, run / "model")


def assert_genai_as_documented(model_type: str, bundle):
    """A decoder bundle has genai_config.json exactly where onnxruntime-genai runs the type, and then
    the real runtime generates from it; elsewhere the manifest says why not."""
    from edgeslim.families import genai_runs

    entry = json.loads((bundle / "manifest.json").read_text())["genai"]
    assert entry["written"] == genai_runs(model_type), entry
    if not entry["written"]:
        assert f"does not run model type '{model_type}'" in entry["reason"]
        return
    import onnxruntime_genai as og

    model = og.Model(str(bundle))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=8)
    generator = og.Generator(model, params)
    generator.append_tokens([[5, 6, 7]])
    while not generator.is_done():
        generator.generate_next_token()
    assert len(generator.get_sequence(0)) == 8
