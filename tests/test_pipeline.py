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


def test_onnx_params_counts_weights_not_rotary_tables(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeslim.report.matrix import onnx_params

    inits = [numpy_helper.from_array(np.ones((4, 4), np.float32), "w"),
             numpy_helper.from_array(np.ones((100, 2), np.float32), "cos_cache"),
             numpy_helper.from_array(np.ones((100, 2), np.float32), "sin_cache")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("RotaryEmbedding", ["y", "pos", "cos_cache", "sin_cache"], ["z"], domain="com.microsoft")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                                           helper.make_tensor_value_info("pos", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])], inits)
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert onnx_params(path) == 16
