"""The input contract over every recipe key, table-driven: each bad value gets exit 2, one line on
stderr naming the key (path and line in the recipe) and what to change, and nothing written.

The recipe cases are generated from the recipe's own pydantic models: for every field of every
section and every stage config (the quantize modes included), each value its constraints forbid
(below a minimum, above a maximum, outside a set of choices, of the wrong type) and an unknown key
beside it. A key added later is covered without editing this file. The CLI runs in-process (its real
``main``), so hundreds of cases take seconds; :mod:`test_bad_inputs` runs the other commands' cases
as a subprocess, the way a user calls them.
"""

from __future__ import annotations

import copy
import types
import typing
from typing import Any, Literal

import annotated_types as at
import pytest
from pydantic import BaseModel

from conftest import tiny_recipe_dict, write_recipe
from edgeslim.cli import main

#: A recipe with every stage (each valid), so every stage config's keys can be varied.
FULL_STAGES = [
    {"distill": {"layers": {"every": 2}, "epochs": 1}},
    {"prune": {"heads": 0.25, "ffn": 0.25}},
    {"vocab": {}},
    {"lowrank": {"rank": 8}},
    {"export": {}},
    {"quantize": {"mode": "dynamic"}},
    {"bundle": {}},
]
QUANTIZE_MODES = {"dynamic": "DynamicSpec", "static": "StaticSpec", "weight_only": "WeightOnlySpec",
                  "neural_compressor": "NeuralCompressorSpec"}


def full_recipe() -> dict:
    recipe = tiny_recipe_dict()
    recipe["stages"] = copy.deepcopy(FULL_STAGES)
    return recipe


def _plain(annotation: Any) -> list[Any]:
    """The member types of an annotation (``int | None`` -> [int])."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def bad_values(field) -> list[tuple[str, Any]]:
    """(what is wrong, value) for each value the field's declaration forbids."""
    members = _plain(field.annotation)
    numeric = [m for m in members if m in (int, float)]
    out = []
    for rule in field.metadata:
        step = 1 if numeric == [int] else 0.5
        if isinstance(rule, at.Ge):
            out.append(("below its minimum", rule.ge - step))
        elif isinstance(rule, at.Gt):
            out.append(("at its exclusive minimum", rule.gt))
        elif isinstance(rule, at.Le):
            out.append(("above its maximum", rule.le + step))
        elif isinstance(rule, at.Lt):
            out.append(("at its exclusive maximum", rule.lt))
    literals = [m for m in members if typing.get_origin(m) is Literal]
    if literals and len(members) == len(literals):
        out.append(("not one of its choices", "no-such-choice"))
    if members and all(m in (int, float) for m in members):
        out.append(("not a number", "lots"))
    if members == [bool]:
        out.append(("not true or false", "maybe"))
    if members == [str]:
        out.append(("not text", ["a", "list"]))
    return out


def model_cases(model: type[BaseModel], path: list, label: str, skip: tuple[str, ...] = ()) -> list[tuple]:
    """Cases for ``model`` placed at ``path`` in the recipe (``label`` is how errors name it), its
    nested sections included: (case id, path to the key, value, expected key label)."""
    cases = [(f"{label}: unknown key", path + ["zzz_typo"], 1, f"{label}.zzz_typo")]
    for name, field in model.model_fields.items():
        if name in skip or field.exclude:
            continue
        for why, value in bad_values(field):
            cases.append((f"{label}.{name}: {why}", path + [name], value, f"{label}.{name}"))
        nested = [m for m in _plain(field.annotation) if isinstance(m, type) and issubclass(m, BaseModel)]
        if len(nested) == 1 and len(_plain(field.annotation)) == 1:
            cases += model_cases(nested[0], path + [name], f"{label}.{name}")
    return cases


def recipe_cases() -> list[tuple]:
    from edgeslim.quantize import specs
    from edgeslim.recipe import Budgets, DataConfig, LatencyBudget, MeasureConfig
    from edgeslim.stages import get_stage
    from edgeslim.teacher import FinetuneConfig, TeacherConfig, TokenizerTrainConfig

    # an eval_source case needs the section's required source beside the bad key
    cases = [case + ({"source": "held-out.csv"},) if case[1][:2] == ["data", "eval_source"] else case
             for case in model_cases(DataConfig, ["data"], "data")]
    cases += model_cases(MeasureConfig, ["measure"], "measure")
    cases += model_cases(Budgets, ["budgets"], "budgets", skip=("latency_ms", "peak_memory_mb", "instructions"))
    cases += model_cases(LatencyBudget, ["budgets", "latency_ms", "x86-64-cpu"], "budgets.latency_ms.x86-64-cpu")
    cases += model_cases(TeacherConfig, ["teacher"], "teacher", skip=("finetune", "train_tokenizer", "build"))
    cases += model_cases(FinetuneConfig, ["teacher", "finetune"], "teacher.finetune")
    cases += model_cases(TokenizerTrainConfig, ["teacher", "train_tokenizer"], "teacher.train_tokenizer")
    for index, entry in enumerate(FULL_STAGES):
        (name, _), = entry.items()
        config = get_stage(name).config
        cases += model_cases(config, ["stages", index, name], f"stages[{index}].{name}", skip=("spec", "candidates"))
    index = next(i for i, entry in enumerate(FULL_STAGES) if "quantize" in entry)
    for mode, class_name in QUANTIZE_MODES.items():
        spec = getattr(specs, class_name)
        for case_id, path, value, key in model_cases(spec, ["stages", index, "quantize"],
                                                     f"stages[{index}].quantize", skip=("mode",)):
            cases.append((f"{case_id} (mode {mode})", path, value, key, {"mode": mode}))
    return [case if len(case) == 5 else (*case, {}) for case in cases]


RECIPE_CASES = {case[0]: case[1:] for case in recipe_cases()}


def _place(recipe: dict, path: list, value: Any, extra: dict) -> None:
    node = recipe
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
    if extra:
        node.clear()
        node.update(extra)
    node[path[-1]] = value


def run_main(capsys, *args) -> tuple[int, list[str]]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, [line for line in err.strip().splitlines() if line.strip()]


def test_the_full_recipe_is_valid(capsys, tmp_path):
    """The base every case changes one key of: valid as it stands, so each case fails for its key."""
    code, lines = run_main(capsys, "check", write_recipe(tmp_path, full_recipe()))
    assert code == 0, lines


def test_the_table_is_large():
    assert len(RECIPE_CASES) >= 150, len(RECIPE_CASES)


@pytest.mark.parametrize("case", sorted(RECIPE_CASES))
def test_a_bad_recipe_value_is_one_line_naming_its_key(capsys, tmp_path, case):
    path, value, key, extra = RECIPE_CASES[case]
    recipe = full_recipe()
    _place(recipe, path, value, extra)
    recipe_path = write_recipe(tmp_path, recipe)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, lines = run_main(capsys, "check", recipe_path)
    assert code == 2 and len(lines) == 1, (case, lines)
    line = lines[0]
    assert line.startswith(f"edgeslim: error: {recipe_path}:"), line  # the file and the line of the key
    stage, _, leaf = key.rpartition(".")
    assert key in line or (stage in line and leaf in line), (key, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ------------------------------------------------------------------------------- other commands

REPORT = {"schema_version": 1, "teacher": "t", "release": "r", "devices": [],
          "artifacts": [{"name": "t", "devices": {}}, {"name": "r", "devices": {}}]}


def _write(tmp, name: str, content: str | bytes):
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _report(tmp, **changes):
    return _write(tmp, "run/report/report.json", __import__("json").dumps({**REPORT, **changes}))


def _onnx(tmp):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return path


def _recipe_file(tmp):
    return write_recipe(tmp, tiny_recipe_dict())


#: case -> (arguments built in the case's folder, a fragment the one error line must hold)
COMMAND_CASES = {
    # gate and report: what is not a complete report
    "gate: no such report": (lambda t: ["gate", t / "none.json"], "does not exist"),
    "gate: a folder without report.json": (lambda t: ["gate", (t / "d").mkdir() or t / "d"], "does not exist"),
    "gate: not JSON": (lambda t: ["gate", _write(t, "r.json", "{oops")], "is not JSON"),
    "gate: JSON that is a list": (lambda t: ["gate", _write(t, "r.json", "[1, 2]")], "is not an edgeslim report"),
    "gate: a newer schema": (lambda t: ["gate", _report(t, schema_version=99)], "has report schema 99"),
    "gate: release is missing": (lambda t: ["gate", _report(t, release=None)], "release"),
    "gate: baseline does not exist": (lambda t: ["gate", _report(t), "--baseline", t / "old.onnx"],
                                      "--baseline"),
    "gate: baseline threshold zero": (lambda t: ["gate", _report(t), "--baseline", _onnx(t),
                                                 "--baseline-threshold", "0"], "--baseline-threshold"),
    "gate: baseline threshold negative": (lambda t: ["gate", _report(t), "--baseline", _onnx(t),
                                                     "--baseline-threshold", "-0.1"], "--baseline-threshold"),
    "gate: baseline device unknown": (lambda t: ["gate", _report(t), "--baseline", _onnx(t),
                                                 "--baseline-device", "toaster"], "'toaster'"),
    "gate: recipe does not exist": (lambda t: ["gate", _report(t, release_files={}), "--recipe", t / "none.yaml"],
                                    "none.yaml"),
    "report: no such report": (lambda t: ["report", t / "none.json"], "does not exist"),
    "report: not JSON": (lambda t: ["report", _write(t, "r.json", "nope")], "is not JSON"),
    "report: binary": (lambda t: ["report", _write(t, "r.json", b"\xff\xfe\x00")], "r.json"),
    "report: a newer schema": (lambda t: ["report", _report(t, schema_version=2)], "has report schema 2"),
    "report: artifacts not a list": (lambda t: ["report", _report(t, artifacts="x")], "artifacts"),
    "report: devices a number": (lambda t: ["report", _report(t, devices=3)], "'devices' must be a list"),
    # bench: what is not a model, and options out of range
    "bench: no such model": (lambda t: ["bench", t / "none.onnx"], "does not exist"),
    "bench: an empty file": (lambda t: ["bench", _write(t, "m.onnx", b"")], "m.onnx"),
    "bench: a JSON file": (lambda t: ["bench", _write(t, "m.json", "{}")], "is not a readable ONNX model"),
    "bench: random bytes": (lambda t: ["bench", _write(t, "m.onnx", bytes(range(256)) * 4)],
                            "is not a readable ONNX model"),
    "bench: runs zero": (lambda t: ["bench", _onnx(t), "--runs", "0"], "--runs"),
    "bench: warmup negative": (lambda t: ["bench", _onnx(t), "--warmup", "-1"], "--warmup"),
    "bench: seq-len negative": (lambda t: ["bench", _onnx(t), "--seq-len", "-4"], "--seq-len"),
    "bench: unknown device": (lambda t: ["bench", _onnx(t), "--device", "toaster"], "'toaster'"),
    "bench: unknown second device": (lambda t: ["bench", _onnx(t), "--device", "x86-64-cpu", "--device", "fridge"],
                                     "'fridge'"),
    "bench: device file not YAML": (lambda t: ["bench", _onnx(t), "--device", _write(t, "d.yaml", "a: [b")],
                                    "not valid YAML"),
    "bench: json under a file": (lambda t: ["bench", _onnx(t), "--json", _write(t, "f", "x") / "cells.json"],
                                 "is a file, not a folder"),
    "bench: json is a folder": (lambda t: ["bench", _onnx(t), "--json", t], "is a folder"),
    "bench: baseline does not exist": (lambda t: ["bench", _onnx(t), "--baseline", t / "old.onnx"], "--baseline"),
    # devices
    "devices show: no name": (lambda t: ["devices", "show"], "needs a device name"),
    "devices show: unknown name": (lambda t: ["devices", "show", "pocket-calculator"], "'pocket-calculator'"),
    "devices show: missing file": (lambda t: ["devices", "show", t / "none.yaml"], "does not exist"),
    "devices show: a folder": (lambda t: ["devices", "show", t / "dir.yaml" if (t / "dir.yaml").mkdir() is None else t],
                               "is a folder"),
    "devices show: not YAML": (lambda t: ["devices", "show", _write(t, "d.yaml", "name: [x")], "not valid YAML"),
    "devices show: binary": (lambda t: ["devices", "show", _write(t, "d.yaml", b"\xff\xfe\x00")], "not UTF-8"),
    "devices show: a list": (lambda t: ["devices", "show", _write(t, "d.yaml", "- a\n")], "must be a YAML mapping"),
    "devices show: keys missing": (lambda t: ["devices", "show", _write(t, "d.yaml", "name: x\n")],
                                   "required key is missing"),
    "devices calibrate: no name": (lambda t: ["devices", "calibrate"], "needs a device name"),
    "devices calibrate: no --out": (lambda t: ["devices", "calibrate", "x86-64-cpu"], "needs --out"),
    "devices calibrate: --out not YAML": (lambda t: ["devices", "calibrate", "x86-64-cpu", "--out", t / "p.txt"],
                                          "needs --out FILE.yaml"),
    "devices calibrate: --out under a file": (lambda t: ["devices", "calibrate", "x86-64-cpu", "--out",
                                                         _write(t, "f", "x") / "p.yaml"], "is a file, not a folder"),
    "devices calibrate: --out unwritable": (lambda t: ["devices", "calibrate", "x86-64-cpu", "--out",
                                                       "/proc/edgeslim-profile.yaml"], "cannot write"),
    "devices calibrate: runs too few": (lambda t: ["devices", "calibrate", "x86-64-cpu", "--out", t / "p.yaml",
                                                   "--runs", "2"], "--runs must be at least 5"),
    "devices calibrate: unknown device": (lambda t: ["devices", "calibrate", "toaster", "--out", t / "p.yaml"],
                                          "'toaster'"),
    # recipes, check and run: what is not a recipe
    "recipes show: no name": (lambda t: ["recipes", "show"], "needs a recipe name"),
    "recipes show: unknown name": (lambda t: ["recipes", "show", "no-such-recipe"], "'no-such-recipe'"),
    "check: a folder": (lambda t: ["check", (t / "r.yaml").mkdir() or t / "r.yaml"], "is a folder"),
    "check: binary": (lambda t: ["check", _write(t, "r.yaml", b"\xff\xfe\x00name")], "not UTF-8"),
    "check: empty file": (lambda t: ["check", _write(t, "r.yaml", "")], "a recipe is a YAML mapping"),
    "check: a list": (lambda t: ["check", _write(t, "r.yaml", "- distill\n")], "a recipe is a YAML mapping"),
    "check: a scalar": (lambda t: ["check", _write(t, "r.yaml", "just words\n")], "a recipe is a YAML mapping"),
    "check: unclosed bracket": (lambda t: ["check", _write(t, "r.yaml", "name: [x\n")], "YAML syntax error"),
    "check: tab indentation": (lambda t: ["check", _write(t, "r.yaml", "name: x\nteacher:\n\tsource: y\n")],
                               "YAML syntax error"),
    "run: unknown built-in": (lambda t: ["run", "no-such-recipe"], "'no-such-recipe'"),
    "run: out is a file": (lambda t: ["run", _recipe_file(t), "--out", _write(t, "out", "x")], "is a file"),
    "run: out unwritable": (lambda t: ["run", _recipe_file(t), "--out", "/proc/edgeslim-out"], "cannot create"),
    "run: recipe is binary": (lambda t: ["run", _write(t, "r.yaml", b"\x00\xff\xfe")], "not UTF-8"),
}


def test_commands_table_spans_every_command():
    assert len(COMMAND_CASES) >= 50
    assert {case.split(":")[0].split()[0] for case in COMMAND_CASES} == {
        "gate", "report", "bench", "devices", "recipes", "check", "run"}


@pytest.mark.parametrize("case", sorted(COMMAND_CASES))
def test_a_bad_command_input_is_one_line(capsys, tmp_path, case):
    build, expected = COMMAND_CASES[case]
    args = build(tmp_path)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    code, lines = run_main(capsys, *args)
    assert code == 2 and len(lines) == 1, (case, lines)
    assert lines[0].startswith("edgeslim: error: ") and expected in lines[0], (case, lines[0])
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before, case
