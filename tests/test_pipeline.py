"""Pipeline building blocks: atomic stage folders and the code version in cache keys."""

from __future__ import annotations

import pytest

from edgeslim.artifacts import atomic_dir
from edgeslim.pipeline import PACKAGE_DIR, code_version


def test_atomic_dir_replaces_only_on_success(tmp_path):
    final = tmp_path / "01-stage"
    with atomic_dir(final) as tmp:
        (tmp / "model.onnx").write_text("first")
    assert (final / "model.onnx").read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "model.onnx").write_text("half")
            raise RuntimeError("crash inside the stage")
    assert (final / "model.onnx").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["01-stage"]


def test_code_version_follows_the_stage_code_only(tmp_path):
    stage_code = tmp_path / "stagepkg"
    stage_code.mkdir()
    (stage_code / "stage.py").write_text("VALUE = 1\n")
    before = code_version(stage_code)
    assert code_version(stage_code) == before
    (stage_code / "stage.py").write_text("VALUE = 2\n")
    assert code_version(stage_code) != before
    # the report and the device runners are not part of any stage's code
    assert code_version(PACKAGE_DIR / "export") == code_version(PACKAGE_DIR / "export")
    assert code_version(PACKAGE_DIR / "export") != code_version(PACKAGE_DIR / "compress")
