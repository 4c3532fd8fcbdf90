"""The package's import graph: no cycles (lazy imports included), and stage cache keys that follow
exactly the code a stage imports."""

from __future__ import annotations

import shutil
from pathlib import Path

from edgeslim.codegraph import PACKAGE_DIR, closure, cycles, imports_of
from edgeslim.pipeline import code_version


def test_the_package_has_no_import_cycle():
    assert cycles() == []


def test_lazy_imports_count_and_type_hints_do_not(tmp_path):
    root = tmp_path / "edgeslim"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from edgeslim import b\n")
    (root / "b.py").write_text("def f():\n    from edgeslim.a import g\n")
    assert imports_of("edgeslim.b", root) == {"edgeslim.a"} and imports_of("edgeslim.a", root) == frozenset()
    (root / "a.py").write_text("def g():\n    import edgeslim.b\n")
    assert cycles(root) == [["edgeslim.a", "edgeslim.b"]]


def test_a_stage_key_follows_every_module_its_module_imports(tmp_path):
    root = tmp_path / "edgeslim"
    shutil.copytree(PACKAGE_DIR, root, ignore=shutil.ignore_patterns("__pycache__"))
    export = "edgeslim.export.onnx"
    assert "edgeslim.compress.lowrank" in closure(export, root)  # export loads low-rank models
    before = code_version(export, root)
    for unrelated in ("report/render.py", "targets/runners/ssh.py", "export/mobile.py"):
        (root / unrelated).write_text((root / unrelated).read_text() + "\n# edited\n")
        assert code_version(export, root) == before, unrelated
    lowrank = root / "compress" / "lowrank.py"  # another folder, imported by export
    lowrank.write_text(lowrank.read_text() + "\n# edited\n")
    assert code_version(export, root) != before
    assert code_version("edgeslim.teacher", root) != code_version("edgeslim.quantize.stage", root)


def test_the_teacher_and_the_baselines_are_registered_stages():
    from edgeslim.stages import get_stage

    assert get_stage("teacher").consumes == "source"
    assert (get_stage("plain-quantize").consumes, get_stage("plain-quantize").produces) == ("onnx", "onnx")
    assert get_stage("export").module == "edgeslim.export.onnx"
    assert get_stage("quantize").function == "edgeslim.quantize.stage:run"


def test_fast_commands_import_neither_torch_nor_transformers_nor_onnxruntime(tmp_path):
    """check (of a recipe whose teacher is a model folder), recipes, devices, --help and --version
    answer without the heavy libraries: what they import is asserted, not how long they take."""
    import subprocess
    import sys

    import yaml

    from conftest import tiny_recipe_dict, write_recipe
    from edgeslim.model_shape import READABLE_TYPES

    folder = tmp_path / "teacher"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert", "num_hidden_layers": 4, "hidden_size": 64, '
                                        '"num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 900}')
    recipe = tiny_recipe_dict()
    recipe["teacher"] = {"source": str(folder)}
    path = write_recipe(tmp_path, recipe)
    assert "bert" in READABLE_TYPES and yaml.safe_load(path.read_text())["teacher"]["source"] == str(folder)
    probe = ("import sys, edgeslim.cli as c; code = c.main(sys.argv[1:]); "
             "heavy = sorted(m for m in ('torch', 'transformers', 'onnxruntime') if m in sys.modules); "
             "print('HEAVY', heavy, code)")
    for args in (["check", str(path)], ["recipes", "list"], ["recipes", "show", "minilm-sentiment"],
                 ["devices", "list"], ["devices", "show", "x86-64-cpu"]):
        result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True)
        assert "HEAVY [] 0" in result.stdout, (args, result.stdout[-500:], result.stderr[-1500:])


def test_no_module_is_over_450_lines():
    from edgeslim.codegraph import modules

    long = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {name: n for name, n in long.items() if n > 450} == {}
