"""Every bad input the spine handles: one clear line on stderr, exit code 2, nothing half-written."""

from __future__ import annotations

import json

import pytest


from conftest import TINY_RECIPE, write_recipe
from edgeslim.cli import main


def run_main(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("edgeslim: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_recipe_file(capsys, tmp_path):
    code, _, err = run_main(capsys, "check", tmp_path / "nope.yaml")
    assert_one_line_error(code, err, "nope.yaml", "does not exist")


def test_yaml_syntax_error_names_the_line(capsys, tmp_path):
    path = write_recipe(tmp_path, "name: x\nteacher:\n  source: [unclosed\ndata: {}\n")
    code, _, err = run_main(capsys, "check", path)
    assert_one_line_error(code, err, "YAML syntax error", f"{path}:")


def test_unknown_key_names_key_path_and_line(capsys, tmp_path, recipe_dict):
    recipe_dict["data"]["encodnig"] = "utf-8"
    path = write_recipe(tmp_path, recipe_dict)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "encodnig" in text)
    code, _, err = run_main(capsys, "check", path)
    assert_one_line_error(code, err, f"{path}:{line}", "data.encodnig", "unknown key")


def test_wrong_type_names_key_path(capsys, tmp_path, recipe_dict):
    recipe_dict["data"]["max_length"] = "long"
    code, _, err = run_main(capsys, "check", write_recipe(tmp_path, recipe_dict))
    assert_one_line_error(code, err, "data.max_length")


def test_wrong_type_inside_a_stage(capsys, tmp_path, recipe_dict):
    recipe_dict["stages"][0]["distill"]["temperature"] = -1
    path = write_recipe(tmp_path, recipe_dict)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "temperature" in text)
    code, _, err = run_main(capsys, "check", path)
    assert_one_line_error(code, err, f"{path}:{line}", "stages[0].distill.temperature", "temperature")


def test_unknown_stage(capsys, tmp_path, recipe_dict):
    recipe_dict["stages"].insert(1, {"sparsify": {}})
    code, _, err = run_main(capsys, "check", write_recipe(tmp_path, recipe_dict))
    assert_one_line_error(code, err, "stages[1]", "unknown stage 'sparsify'")


def test_stages_in_an_impossible_order(capsys, tmp_path, recipe_dict):
    recipe_dict["stages"] = [{"quantize": {"mode": "dynamic"}}, {"export": {}}]
    code, _, err = run_main(capsys, "check", write_recipe(tmp_path, recipe_dict))
    assert_one_line_error(code, err, "'quantize' needs a onnx model")


def test_unknown_device(capsys, tmp_path, recipe_dict):
    recipe_dict["devices"] = ["x86-64-cpu", "pocket-calculator"]
    code, _, err = run_main(capsys, "check", write_recipe(tmp_path, recipe_dict))
    assert_one_line_error(code, err, "pocket-calculator")


def test_missing_data_file(capsys, tmp_path, recipe_dict):
    recipe_dict["data"]["source"] = str(tmp_path / "missing.csv")
    code, _, err = run_main(capsys, "check", write_recipe(tmp_path, recipe_dict))
    assert_one_line_error(code, err, "data.source", "does not exist")


@pytest.mark.parametrize("key, value, fragments", [
    ("label_column", "sentiment", ("data.label_column 'sentiment'", "columns: text, label")),
    ("labels", ["negative", "positive"], ("data.labels does not list neutral",)),
    ("source", "pkg://no_such_package_xyz/data.csv", ("package 'no_such_package_xyz' is not installed", "pip install")),
    ("source", "pkg://edgeslim/no/such/file.csv", ("pkg://edgeslim/no/such/file.csv", "has no 'no/such/file.csv'")),
], ids=["missing-label-column", "labels-not-listed", "pkg-not-installed", "pkg-wrong-path"])
def test_bad_data_section(capsys, tmp_path, recipe_dict, key, value, fragments):
    recipe_dict["data"][key] = value
    code, _, err = run_main(capsys, "check", write_recipe(tmp_path, recipe_dict))
    assert_one_line_error(code, err, *fragments)


def test_teacher_path_that_does_not_exist(capsys, tmp_path, recipe_dict):
    recipe_dict["teacher"] = {"source": "./no-such-model"}
    code, _, err = run_main(capsys, "check", write_recipe(tmp_path, recipe_dict))
    assert_one_line_error(code, err, "teacher source './no-such-model' does not exist")


def test_teacher_with_both_source_and_build(capsys, tmp_path, recipe_dict):
    recipe_dict["teacher"]["source"] = "./x"
    code, _, err = run_main(capsys, "check", write_recipe(tmp_path, recipe_dict))
    assert_one_line_error(code, err, "teacher", "exactly one of 'source'")


def test_csv_in_the_wrong_encoding(capsys, tmp_path, recipe_dict):
    data = tmp_path / "latin.csv"
    rows = "text,label\n" + "".join(f"caf\xe9 number {i},{'ab'[i % 2]}\n" for i in range(20))
    data.write_bytes(rows.encode("latin-1"))
    recipe_dict["data"].update(source=str(data), labels=None, eval_size=4)
    code, _, err = run_main(capsys, "check", write_recipe(tmp_path, recipe_dict))
    assert_one_line_error(code, err, "not valid utf-8", "data.encoding", "latin-1")
    recipe_dict["data"]["encoding"] = "latin-1"
    code, out, err = run_main(capsys, "check", write_recipe(tmp_path, recipe_dict))
    assert code == 0, err


def test_failed_run_leaves_nothing_behind(capsys, tmp_path, recipe_dict):
    recipe_dict["data"]["label_column"] = "sentiment"
    out = tmp_path / "out"
    code, _, err = run_main(capsys, "run", write_recipe(tmp_path, recipe_dict), "--out", out)
    assert_one_line_error(code, err, "label_column")
    assert not out.exists()


def test_gate_on_a_file_that_is_not_a_report(capsys, tmp_path):
    not_json = tmp_path / "report.json"
    not_json.write_text("hello")
    code, _, err = run_main(capsys, "gate", not_json)
    assert_one_line_error(code, err, "is not JSON")
    not_report = tmp_path / "other.json"
    not_report.write_text(json.dumps({"name": "x"}))
    code, _, err = run_main(capsys, "gate", not_report)
    assert_one_line_error(code, err, "is not an edgeslim report")
    code, _, err = run_main(capsys, "gate", tmp_path / "absent.json")
    assert_one_line_error(code, err, "does not exist")


def test_devices_show_unknown(capsys):
    code, _, err = run_main(capsys, "devices", "show", "pocket-calculator")
    assert_one_line_error(code, err, "pocket-calculator")


def test_check_accepts_the_tiny_recipe(capsys):
    code, out, _ = run_main(capsys, "check", TINY_RECIPE)
    assert code == 0 and "recipe 'tiny-test' is valid" in out
    assert "teacher -> distill -> export -> quantize" in out


def test_an_internal_error_is_never_reported_as_a_gate_failure(capsys, tmp_path):
    """A crash (here: a report whose release lacks size_bytes) exits 3 with one line, so CI never
    mistakes it for a failed budget (exit 1)."""
    from edgeslim.artifacts import file_digests

    artifacts = [{"name": "t", "accuracy": 0.9, "devices": {}}, {"name": "r", "accuracy": 0.9, "devices": {}}]
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.onnx").write_bytes(b"not measured here")
    report = tmp_path / "report" / "report.json"
    report.parent.mkdir()
    report.write_text(json.dumps({"schema_version": 1, "teacher": "t", "release": "r", "artifacts": artifacts,
                                  "budgets": {"size_mb": 5}, "release_files": file_digests(tmp_path / "model")}))
    code, _, err = run_main(capsys, "gate", report)
    lines = err.strip().splitlines()
    assert code == 3 and len(lines) == 1
    assert lines[0].startswith("edgeslim: internal error: KeyError") and "--debug" in lines[0]


def test_unlabeled_rows_come_after_the_train_split_and_need_room(capsys, tmp_path, recipe_dict):
    """data.unlabeled_size takes in-domain text from the rows the train split leaves over; with no
    rows left it is one line naming data.train_size."""
    from edgeslim.data import load_data
    from edgeslim.recipe import load_recipe

    recipe_dict["data"].update(train_size=30, unlabeled_size=20)
    recipe = load_recipe(write_recipe(tmp_path, recipe_dict))
    data = load_data(recipe.data, recipe.base_dir, recipe.task)
    recipe.data.train_size, recipe.data.unlabeled_size = 50, None
    longer = load_data(recipe.data, recipe.base_dir, recipe.task)  # the same shuffle, 20 more train rows
    assert [ex.text for ex in data.train] == [ex.text for ex in longer.train[:30]]
    assert data.unlabeled == [ex.text for ex in longer.train[30:]]
    del recipe_dict["data"]["train_size"]
    code, _, err = run_main(capsys, "check", write_recipe(tmp_path, recipe_dict))
    assert_one_line_error(code, err, "data.unlabeled_size", "data.train_size")
