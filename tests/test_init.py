"""``edgeslim init``: a recipe from a model and a data file that ``edgeslim check`` accepts unchanged."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import TINY_DATA, run_cli
from edgeslim.cli import main


def _bert_folder(tmp_path, head: bool):
    folder = tmp_path / "my-bert"
    folder.mkdir()
    config = {"model_type": "bert", "num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 4,
              "intermediate_size": 128, "vocab_size": 900, "max_position_embeddings": 64,
              "architectures": ["BertForSequenceClassification" if head else "BertModel"]}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _init(capsys, *args) -> tuple[int, str, list[str]]:
    code = main(["init", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


@pytest.mark.parametrize("head", [False, True])
def test_init_writes_a_commented_recipe_that_check_accepts(capsys, tmp_path, head):
    model = _bert_folder(tmp_path, head)
    data = tmp_path / "tweets.csv"
    rows = [("a fine day", "pos", 3), ("an awful day", "neg", 1), ("just a day", "neu", 2)] * 20
    data.write_text("id,tweet,mood,stars\n" + "".join(f"{i},{t} {i},{m},{s}\n" for i, (t, m, s) in enumerate(rows)))
    out = tmp_path / "recipes" / "mine.yaml"
    code, stdout, err = _init(capsys, model, data, "--out", out, "--device", "x86-64-cpu", "--device", "raspberry-pi-4")
    assert code == 0, err
    text = out.read_text()
    recipe = yaml.safe_load(text)
    assert recipe["task"] == "text-classification"
    assert recipe["data"]["text_column"] == "tweet" and recipe["data"]["label_column"] == "mood"
    assert recipe["data"]["labels"] == ["neg", "neu", "pos"]
    assert ("finetune" in recipe["teacher"]) is (not head)  # a model without a head gets one trained
    assert recipe["devices"] == ["x86-64-cpu", "raspberry-pi-4"]
    assert text.startswith("# Written by 'edgeslim init'") and "label column 'mood'" in text
    assert main(["check", str(out)]) == 0, capsys.readouterr().err  # unchanged, from another folder
    assert "edgeslim check" in stdout


def _init_on_text(capsys, tmp_path, model):
    """``edgeslim init MODEL corpus.txt``: the recipe it wrote, and where."""
    text = tmp_path / "corpus.txt"
    text.write_text("".join(f"line number {i} of some text\n" for i in range(50)))
    out = tmp_path / "lm.yaml"
    code, _, err = _init(capsys, model, text, "--out", out)
    assert code == 0, err
    return yaml.safe_load(out.read_text()), out


def test_init_for_a_plain_text_file_and_a_causal_lm(capsys, tmp_path):
    folder = tmp_path / "tiny-llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 300, "architectures": ["LlamaForCausalLM"]}))
    recipe, out = _init_on_text(capsys, tmp_path, folder)
    assert recipe["task"] == "causal-lm" and recipe["data"]["format"] == "text" and recipe["release"] == "best"
    assert [next(iter(s)) for s in recipe["stages"]] == ["export", "quantize", "bundle"]
    assert main(["check", str(out)]) == 0, capsys.readouterr().err


def test_init_reads_latin1_and_numeric_labels(capsys, tmp_path):
    model = _bert_folder(tmp_path, head=True)
    data = tmp_path / "d.csv"
    data.write_bytes(("text,label\n" + "".join(f"caf\xe9 number {i},{i % 2}\n" for i in range(40))).encode("latin-1"))
    out = tmp_path / "r.yaml"
    assert _init(capsys, model, data, "--out", out)[0] == 0
    recipe = yaml.safe_load(out.read_text())
    assert recipe["data"]["encoding"] == "latin-1" and recipe["data"]["labels"] == ["0", "1"]
    assert main(["check", str(out)]) == 0, capsys.readouterr().err


INIT_BAD = {
    "model does not exist": (lambda t: [t / "nope", TINY_DATA], "does not exist"),
    "hub id while offline": (lambda t: ["someorg/somemodel", TINY_DATA], "--allow-network"),
    "model folder without config": (lambda t: [(t / "m").mkdir() or t / "m", TINY_DATA], "without config.json"),
    "data does not exist": (lambda t: [_bert_folder(t, True), t / "none.csv"], "does not exist"),
    "data of unknown format": (lambda t: [_bert_folder(t, True), (t / "d.xlsx").write_text("x") and t / "d.xlsx"],
                               "cannot tell the format"),
    "data without a label column": (lambda t: [_bert_folder(t, True), (t / "d.csv").write_text(
        "text\n" + "".join(f"row {i}\n" for i in range(30))) and t / "d.csv"], "no column looks like labels"),
    "out exists": (lambda t: [_bert_folder(t, True), TINY_DATA, "--out", (t / "r.yaml").write_text("x") and t / "r.yaml"],
                   "already exists"),
}


@pytest.mark.parametrize("case", sorted(INIT_BAD))
def test_init_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, case):
    build, expected = INIT_BAD[case]
    args = build(tmp_path)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    code, _, err = _init(capsys, *args)
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_init_in_a_subprocess_as_a_user_calls_it(tmp_path):
    model = _bert_folder(tmp_path, head=False)
    result = run_cli("init", model, TINY_DATA, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = tmp_path / "my-bert-tiny-sentiment.yaml"
    assert written.is_file() and run_cli("check", written, cwd=tmp_path).returncode == 0


def test_init_from_a_gguf_file(capsys, tmp_path, monkeypatch):
    """A GGUF teacher: a causal LM, its config read from the header (and cached for check)."""
    from _llm_models import tiny_llama, train_tokenizer, write_gguf

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tokenizer = train_tokenizer(tmp_path / "tok")
    (tmp_path / "models").mkdir()
    gguf = write_gguf(tiny_llama(len(tokenizer)), tokenizer, tmp_path / "models" / "tiny.gguf")
    recipe, out = _init_on_text(capsys, tmp_path, gguf)
    assert recipe["task"] == "causal-lm" and recipe["teacher"]["source"].endswith("tiny.gguf")
    assert "GGUF file (tiny.gguf)" in out.read_text()
    assert list((tmp_path / "cache" / "edgeslim" / "gguf-configs").glob("*.json"))  # read once, then cached
    assert main(["check", str(out)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".tsv", ".zip"])
def test_init_reads_every_labelled_format(capsys, tmp_path, suffix):
    import pandas as pd

    frame = pd.DataFrame({"review": [f"a long review text number {i}" for i in range(40)],
                          "rating": [["bad", "good"][i % 2] for i in range(40)]})
    data = tmp_path / f"reviews{suffix}"
    if suffix == ".jsonl":
        frame.to_json(data, orient="records", lines=True)
    elif suffix == ".parquet":
        frame.to_parquet(data)
    elif suffix == ".zip":  # two splits, as datasets ship them: read as one table
        import zipfile

        with zipfile.ZipFile(data, "w") as archive:
            archive.writestr("train.tsv", frame[:30].to_csv(sep="\t", index=False))
            archive.writestr("test.tsv", frame[30:].to_csv(sep="\t", index=False))
    else:
        frame.to_csv(data, sep="\t", index=False)
    out = tmp_path / "r.yaml"
    code, _, err = _init(capsys, _bert_folder(tmp_path, head=True), data, "--out", out)
    assert code == 0, err
    recipe = yaml.safe_load(out.read_text())
    assert (recipe["data"]["text_column"], recipe["data"]["label_column"], recipe["data"]["labels"]) == (
        "review", "rating", ["bad", "good"])
    assert main(["check", str(out)]) == 0, capsys.readouterr().err
