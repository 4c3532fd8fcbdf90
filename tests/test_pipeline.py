"""Pipeline building blocks: atomic stage folders and the code version in cache keys."""

from __future__ import annotations

import pytest

from edgeslim.artifacts import atomic_dir


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


def test_onnx_params_counts_weights_not_rotary_tables(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeslim.report.params import onnx_params

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


@pytest.mark.slow
def test_whole_run_under_a_two_process_launch(tmp_path):
    """``edgeslim run`` started by ``torchrun`` with two CPU processes (what ``accelerate launch`` does
    on GPUs): both ranks train the teacher, distill and prune data-parallel, rank 0 alone runs vocab
    (between two training stages), export and quantize, and writes the folders and the report."""
    import json
    import os
    import subprocess
    import sys

    from conftest import tiny_recipe_dict, write_recipe

    recipe = tiny_recipe_dict()
    recipe["stages"] = [
        {"distill": {"layers": {"every": 2}, "epochs": 1, "lr": 0.001}},
        {"vocab": {"sources": ["train"]}},
        {"prune": {"heads": 0.5, "ffn": 0.5, "recovery": {"steps": 4}}},
        {"export": {}},
        {"quantize": {"mode": "dynamic"}},
    ]
    path = write_recipe(tmp_path, recipe)
    out = tmp_path / "run"

    def launch(*extra):
        done = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "edgeslim.cli",
             "run", str(path), "--out", str(out), "--quiet", *extra],
            capture_output=True, text=True, timeout=500,
            env={**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"})
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return done

    done = launch()
    assert done.stdout.count("release model:") == 1  # one summary, from rank 0
    stages = out / "stages"
    assert sorted(p.name for p in stages.iterdir() if not p.name.startswith(".")) == [
        "00-teacher", "01-distill", "02-vocab", "03-prune", "04-export", "05-quantize"]
    assert not [p.name for p in stages.iterdir() if ".rank" in p.name or ".tmp-" in p.name or ".work-" in p.name]
    for name in ("00-teacher", "01-distill", "03-prune"):
        assert json.loads((stages / name / "manifest.json").read_text())["metrics"]["train_processes"] == 2
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["release"] and (out / "model" / "model.onnx").is_file()
    # --force reruns every stage on both ranks (rank 0 clears the old folders before anyone starts)
    first_key = json.loads((stages / "01-distill" / "manifest.json").read_text())["key"]
    before = (stages / "05-quantize" / "manifest.json").stat().st_mtime
    launch("--force")
    assert (stages / "05-quantize" / "manifest.json").stat().st_mtime > before
    assert json.loads((stages / "01-distill" / "manifest.json").read_text())["key"] == first_key
