"""The input contract, table-driven: each bad input gets exit 2, one line on stderr naming what to
change, and nothing half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import TINY_DATA, run_cli, tiny_recipe_dict, write_recipe


def _recipe(tmp: Path, change) -> list[str]:
    recipe = tiny_recipe_dict()
    change(recipe)
    return ["check", str(write_recipe(tmp, recipe))]


def _text_recipe(tmp: Path, text: str) -> list[str]:
    path = tmp / "recipe.yaml"
    path.write_text(text.replace("DATA", str(TINY_DATA)))
    return ["check", str(path)]


def _file(tmp: Path, name: str, content: bytes) -> Path:
    path = tmp / name
    path.write_bytes(content)
    return path


def _report(tmp: Path, change) -> list[str]:
    report = {"schema_version": 1, "teacher": "t", "release": "r", "devices": [],
              "artifacts": [{"name": "t", "devices": {}}, {"name": "r", "devices": {}}]}
    change(report)
    (tmp / "report").mkdir()
    (tmp / "report" / "report.json").write_text(json.dumps(report))
    return [str(tmp / "report" / "report.json")]


def _onnx_prefix(tmp: Path) -> Path:
    """The first half of a real ONNX file."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp / "whole.onnx"
    onnx.save(helper.make_model(graph), str(path))
    data = path.read_bytes()
    return _file(tmp, "half.onnx", data[: len(data) // 2])


def _set(section: str, key: str, value):
    def change(recipe):
        recipe[section][key] = value
    return change


CASES = {
    # run: the output folder
    "out is a file": (lambda t: ["run", str(write_recipe(t, tiny_recipe_dict())), "--out", str(_file(t, "f", b"x"))],
                      "is a file, not a folder"),
    "out under a file": (lambda t: ["run", str(write_recipe(t, tiny_recipe_dict())), "--out",
                                    str(_file(t, "f", b"x") / "run")], "is a file, not a folder"),
    "out on a read-only filesystem": (lambda t: ["run", str(write_recipe(t, tiny_recipe_dict())), "--out",
                                                 "/proc/edgeslim-run"], "cannot create or write it"),
    # bench: what is not a model
    "bench a text file": (lambda t: ["bench", str(_file(t, "m.onnx", b"hello world\n"))], "is not a readable ONNX model"),
    "bench a csv": (lambda t: ["bench", str(_file(t, "data.csv", b"text,label\na,b\n"))], "is not a readable ONNX model"),
    "bench a truncated model": (lambda t: ["bench", str(_onnx_prefix(t))], "is not a readable ONNX model"),
    "bench a folder": (lambda t: ["bench", str(t)], "is a folder; give its .onnx file"),
    "bench seq-len 0": (lambda t: ["bench", str(t / "whole.onnx"), "--seq-len", "0"], "--seq-len must be at least 1"),
    # gate / report: what is not a complete report
    "gate a report without release": (lambda t: ["gate"] + _report(t, lambda r: r.pop("release")),
                                      "'release' is missing"),
    "gate a release naming no artifact": (lambda t: ["gate"] + _report(t, lambda r: r.update(release="x")),
                                          "names 'x', which is not among its artifacts"),
    "report with devices as a string": (lambda t: ["report"] + _report(t, lambda r: r.update(devices="cpu")),
                                        "'devices' must be a list"),
    "report whose artifacts lack names": (lambda t: ["report"] + _report(t, lambda r: r.update(artifacts=[{}])),
                                          "must be an object with a 'name'"),
    # check: recipes that are not valid
    "empty teacher folder": (lambda t: _recipe(t, lambda r: (r["teacher"].clear(), r["teacher"].update(
        source=str((t / "empty").mkdir() or t / "empty")))), "folder without config.json"),
    "hidden size not a multiple of the heads": (lambda t: _recipe(t, lambda r: r["teacher"]["build"].update(
        hidden_size=64, num_attention_heads=3)), "is not a multiple of num_attention_heads 3"),
    "hidden size not a number": (lambda t: _recipe(t, lambda r: r["teacher"]["build"].update(hidden_size="big")),
                                 "teacher.build.hidden_size must be a positive whole number"),
    "finetune epochs absurd": (lambda t: _recipe(t, lambda r: r["teacher"]["finetune"].update(epochs=1.0e9)),
                               "less than or equal to 1000"),
    "budget for a device not in the recipe": (lambda t: _recipe(t, lambda r: r["budgets"].update(
        latency_ms={"raspberry-pi-4": {"p50": 5}})), "'raspberry-pi-4' is not one of the recipe's devices"),
    "duplicate key": (lambda t: _text_recipe(t, "name: a\nname: b\nteacher: {source: x}\ndata: {source: DATA}\n"),
                      "key 'name' appears twice"),
    "nested typo": (lambda t: _recipe(t, lambda r: r["stages"][0]["distill"].update(layers={"evry": 2})),
                    "distill.layers.evry: unknown key"),
    "pkg path outside its package": (lambda t: _recipe(t, _set("data", "source", "pkg://yaml/../../etc/passwd")),
                                     "points outside package 'yaml'"),
    "data source is a folder": (lambda t: _recipe(t, _set("data", "source", str(t))), "is a folder"),
    "broken jsonl line": (lambda t: _recipe(t, _set("data", "source", str(_file(
        t, "d.jsonl", b'{"text": "a", "label": "positive"}\n{"text": "b", "label": \n')))), "line 2 is not valid JSON"),
    "hub id while offline": (lambda t: _recipe(t, lambda r: (r["teacher"].clear(), r["teacher"].update(
        source="someorg/somemodel"))), "is a hub id, and edgeslim works offline; pass --allow-network"),
    "labels absent from the data": (lambda t: _recipe(t, lambda r: r["data"].update(
        labels=["negative", "neutral", "positive", "sarcastic"])), "which no row of column 'label' has"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2(tmp_path, case):
    build, expected = CASES[case]
    args = build(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli(*args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stdout[-500:] + result.stderr[-1500:]
    assert len(lines) == 1 and lines[0].startswith("edgeslim: error:") and expected in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing half-written beside the inputs


def test_a_device_file_in_a_recipe_resolves_against_the_recipes_folder(tmp_path):
    from edgeslim.recipe import check_recipe, load_recipe

    folder = tmp_path / "project"
    (folder / "devices").mkdir(parents=True)
    profile = yaml.safe_load((Path(__file__).resolve().parents[1] / "devices" / "x86-64-cpu.yaml").read_text())
    profile["name"] = "my-board"
    (folder / "devices" / "board.yaml").write_text(yaml.safe_dump(profile))
    recipe = tiny_recipe_dict()
    recipe["devices"] = ["devices/board.yaml"]
    recipe["budgets"]["latency_ms"] = {"my-board": {"p50": 100}}
    path = write_recipe(folder, recipe)
    loaded = load_recipe(path)
    assert loaded.devices == [str(folder / "devices" / "board.yaml")]
    assert any("devices" in note for note in check_recipe(loaded))
    shutil.rmtree(folder)


def test_an_unreachable_hub_with_the_network_allowed_is_one_line(tmp_path, monkeypatch):
    """--allow-network lets a hub id be fetched; a hub that does not answer (here a closed port on
    127.0.0.1) ends in one line, exit 2, after huggingface_hub's bounded retries."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    args = _recipe(tmp_path, lambda r: (r["teacher"].clear(), r["teacher"].update(source="someorg/somemodel")))
    result = run_cli(*args, "--allow-network")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "the hub could not be reached or has no such model (http://127.0.0.1:9)" in lines[0]


def test_version_and_help_on_every_argument():
    from edgeslim import __version__
    from edgeslim.cli import build_parser

    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"edgeslim {__version__}"
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        for action in command._actions:
            assert action.help, f"edgeslim {name}: argument {action.dest} has no help text"


class _Payload:
    """A pickle that would create ``marker`` if unpickled without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_teacher_is_refused_in_one_line_and_its_payload_never_runs(tmp_path):
    """A teacher whose only weights are a pickle ``pytorch_model.bin`` carrying a payload: transformers
    loads it with torch's weights_only unpickler, which refuses the payload's global; the run stops
    in one line (exit 2) asking for safetensors, the payload never ran, and no stage output is left."""
    import torch

    from _compress_fixtures import tiny_bert, tiny_tokenizer

    teacher = tmp_path / "teacher"
    tiny_bert(vocab=200).save_pretrained(teacher, safe_serialization=False)
    tiny_tokenizer(tmp_path / "tok").save_pretrained(teacher)
    marker = tmp_path / "payload-ran"
    torch.save({"bert.embeddings.word_embeddings.weight": _Payload(marker)}, teacher / "pytorch_model.bin")
    recipe = tiny_recipe_dict()
    recipe["teacher"] = {"source": str(teacher)}
    path = write_recipe(tmp_path, recipe)
    assert run_cli("check", path).returncode == 0  # the config is fine: only the weights are refused
    out = tmp_path / "run"
    result = run_cli("run", path, "--out", out, "--quiet")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "its weights cannot be loaded" in lines[0] and "safetensors" in lines[0], lines[0]
    assert not marker.exists()
    assert not out.exists() or not any(p.name.startswith("00-") for p in out.iterdir())
