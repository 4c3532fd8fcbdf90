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

    cases = model_cases(DataConfig, ["data"], "data")
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
