"""Reading data sources: a zip archive of data files is one table (datasets ship their splits so)."""

from __future__ import annotations

import zipfile

import pytest

from conftest import write_recipe
from edgeslim.cli import main
from edgeslim.data import load_data
from edgeslim.recipe import load_recipe

ROWS = [(f"review number {i}: {'great, it worked' if i % 2 else 'awful side effects'}", ["bad", "good"][i % 2])
        for i in range(40)]


def _tsv(rows) -> str:
    return "review\trating\n" + "".join(f"{text}\t{label}\n" for text, label in rows)


def _recipe(tmp_path, recipe_dict, source: str):
    recipe_dict["data"] = {"source": source, "text_column": "review", "label_column": "rating",
                           "labels": ["bad", "good"], "eval_size": 10, "max_length": 32}
    return write_recipe(tmp_path, recipe_dict)


def test_every_data_member_of_a_zip_is_read_and_split_once(tmp_path, recipe_dict):
    with zipfile.ZipFile(tmp_path / "reviews.zip", "w") as archive:
        archive.writestr("splits/train.tsv", _tsv(ROWS[:25]))
        archive.writestr("splits/test.tsv", _tsv(ROWS[25:]))
        archive.writestr("README", "not data")  # no data suffix: skipped
    recipe = load_recipe(_recipe(tmp_path, recipe_dict, "reviews.zip"))
    data = load_data(recipe.data, recipe.base_dir, recipe.task)
    texts = [ex.text for ex in data.train + data.eval]
    assert len(data.eval) == 10 and sorted(texts) == sorted(text for text, _ in ROWS)
    labels = {text: label for text, label in ROWS}
    assert all(data.labels[ex.label] == labels[ex.text] for ex in data.train + data.eval)


@pytest.mark.parametrize("content, message", [
    (b"not a zip at all", "is not a readable zip archive"),
    (None, "holds no csv, tsv, jsonl, parquet or txt file"),
])
def test_a_bad_archive_is_one_line(tmp_path, recipe_dict, capsys, content, message):
    path = tmp_path / "data.zip"
    if content is None:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.md", "nothing to train on")
    else:
        path.write_bytes(content)
    recipe = _recipe(tmp_path, recipe_dict, "data.zip")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["check", str(recipe)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "data.zip" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_an_eval_source_is_the_eval_split_and_all_of_source_trains(tmp_path, recipe_dict):
    """``data.eval_source``: held-out text from another file (its own columns; labels mapped onto the
    training labels), shuffled with data.seed and cut to ``size``; every row of ``source`` trains."""
    (tmp_path / "train.tsv").write_text(_tsv(ROWS[:30]))
    other = [(f"another corpus text {i}: {'fine' if i % 2 else 'bad'}", ["bad", "good"][i % 2]) for i in range(12)]
    (tmp_path / "held.csv").write_text("body,verdict\n" + "".join(f"{t},{v}\n" for t, v in other))
    recipe_dict["data"] = {"source": "train.tsv", "text_column": "review", "label_column": "rating",
                           "labels": ["bad", "good"], "max_length": 32,
                           "eval_source": {"source": "held.csv", "text_column": "body", "label_column": "verdict",
                                           "size": 8}}
    recipe = load_recipe(write_recipe(tmp_path, recipe_dict))
    data = load_data(recipe.data, recipe.base_dir, recipe.task)
    assert sorted(ex.text for ex in data.train) == sorted(text for text, _ in ROWS[:30])
    held = dict(other)
    assert len(data.eval) == 8 and all(ex.text in held for ex in data.eval)
    assert all(data.labels[ex.label] == held[ex.text] for ex in data.eval)
    again = load_data(recipe.data, recipe.base_dir, recipe.task)
    assert [ex.text for ex in again.eval] == [ex.text for ex in data.eval]  # fixed by data.seed
    (tmp_path / "held.csv").write_text("body,verdict\n" + "".join(f"{t},{v}\n" for t, v in other[::-1]))
    assert load_data(recipe.data, recipe.base_dir, recipe.task).fingerprint != data.fingerprint


@pytest.mark.parametrize("held_out, message", [
    ({"source": "nowhere.csv"}, "data.eval_source.source 'nowhere.csv' does not exist"),
    ({"source": "held.csv", "text_column": "text"}, "data.eval_source.text_column 'text' is not a column of held.csv"),
    ({"source": "held.csv", "text_column": "body", "label_column": "stars"}, "data.eval_source.label_column 'stars'"),
])
def test_a_bad_eval_source_is_one_line_naming_its_key(tmp_path, recipe_dict, capsys, held_out, message):
    (tmp_path / "train.tsv").write_text(_tsv(ROWS[:30]))
    (tmp_path / "held.csv").write_text("body,verdict\nsome text,good\nmore text,bad\n")
    recipe_dict["data"] = {"source": "train.tsv", "text_column": "review", "label_column": "rating",
                           "labels": ["bad", "good"], "max_length": 32, "eval_source": held_out}
    recipe = write_recipe(tmp_path, recipe_dict)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["check", str(recipe)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_eval_size_and_eval_source_together_are_refused(tmp_path, recipe_dict, capsys):
    (tmp_path / "train.tsv").write_text(_tsv(ROWS[:30]))
    recipe_dict["data"] = {"source": "train.tsv", "text_column": "review", "label_column": "rating", "eval_size": 5,
                           "eval_source": {"source": "train.tsv", "text_column": "review", "label_column": "rating"}}
    assert main(["check", str(write_recipe(tmp_path, recipe_dict))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give eval_source.size instead" in err[0]
