"""The local runner and ``measure``: real onnxruntime sessions in a separate process."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeslim.errors import EdgeslimError
from edgeslim.targets import harness
from edgeslim.targets.profile import load_profile
from edgeslim.targets.runners import measure
from edgeslim.targets.instructions import INSTRUCTION_TOLERANCE
from edgeslim.targets.runners.local import count_instructions
from _target_models import token_inputs, token_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("local-models")
    return {
        "small": token_model(folder / "small.onnx", hidden=32, layers=2),
        # ~40 MB more weights than "small": peak memory must show it
        "big": token_model(folder / "big.onnx", hidden=1024, layers=10, seed=1),
    }


@pytest.fixture(scope="module")
def cpu():
    return load_profile("x86-64-cpu")


def test_percentiles_match_numpy_definition():
    samples = list(np.arange(1.0, 101.0))
    stats = harness.percentiles(samples)
    # linear interpolation between order statistics: p = 1 + q/100 * 99 for the values 1..100
    assert stats == pytest.approx({"p50": 50.5, "p90": 90.1, "p99": 99.01, "mean": 50.5, "n": 100})


def test_local_measures_every_model_interleaved(models, cpu):
    cells = measure(cpu, models, token_inputs(), warmup=3, runs=40)
    assert set(cells) == {"small", "big"}
    for name, cell in cells.items():
        assert cell["status"] == "measured", cell
        assert cell["reason"] is None
        lat = cell["latency_ms"]
        assert lat["n"] == 40
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
        assert cell["throughput"] == pytest.approx(1000.0 / lat["mean"])
        # one intra-op thread: the thread's CPU time is within the wall time (clock reads aside)
        assert cell["cpu_ms"]["n"] == 40 and 0 < cell["cpu_ms"]["p50"] <= lat["p50"] + 0.05
        assert cell["peak_memory_mb"] > 0
    weights_mb = (1024 * 1024 * 10 * 4 - 32 * 32 * 2 * 4) / 2**20
    assert cells["big"]["peak_memory_mb"] - cells["small"]["peak_memory_mb"] > 0.8 * weights_mb


def test_one_broken_model_does_not_stop_the_others(models, cpu, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    cells = measure(cpu, {"small": models["small"], "broken": broken}, token_inputs(2), warmup=1, runs=5)
    assert cells["small"]["status"] == "measured"
    assert cells["broken"]["status"] == "error"
    assert "InvalidProtobuf" in cells["broken"]["reason"] or "protobuf" in cells["broken"]["reason"].lower()


def test_inputs_the_model_lacks_are_an_error_cell(models, cpu):
    inputs = [{"input_ids": np.zeros((1, 4), dtype=np.int64)}]
    cells = measure(cpu, {"small": models["small"]}, inputs, warmup=1, runs=2)
    assert cells["small"]["status"] == "error"
    assert "attention_mask" in cells["small"]["reason"]


def test_harness_saves_each_models_outputs(models, cpu, tmp_path):
    from edgeslim.targets.runners.job import write_inputs, write_spec

    inputs = token_inputs(2)
    spec = write_spec(tmp_path / "spec.json", cpu, {"small": str(models["small"])},
                      str(write_inputs(tmp_path / "in.npz", inputs)), warmup=1, runs=3, memory=False,
                      outputs=str(tmp_path / "out.npz"))
    assert harness.main(["harness", str(spec), str(tmp_path / "result.json")]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["small"]["latency_ms"]["n"] == 3
    import onnxruntime as ort

    reference = ort.InferenceSession(str(models["small"]), providers=["CPUExecutionProvider"])
    with np.load(tmp_path / "out.npz") as saved:
        for i, example in enumerate(inputs):
            np.testing.assert_allclose(saved[f"small/{i}/logits"], reference.run(None, example)[0], rtol=1e-5)


def test_cuda_profile_is_skipped_with_reason_without_the_provider(models):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the skip path cannot be shown here")
    cells = measure(load_profile("nvidia-gpu"), {"small": models["small"]}, token_inputs(1), warmup=1, runs=2)
    assert cells["small"]["status"] == "skipped"
    assert "CUDAExecutionProvider" in cells["small"]["reason"]
    assert cells["small"]["latency_ms"] is None


def test_min_time_adds_rounds_beyond_runs(models, cpu):
    # 5 runs of the small model take well under a millisecond; 0.3 s of timing needs many more
    cell = measure(cpu, {"small": models["small"]}, token_inputs(2), warmup=1, runs=5, memory=False,
                   min_time_s=0.3)["small"]
    assert cell["latency_ms"]["n"] > 5


@pytest.mark.parametrize("kwargs, expected", [
    ({"models": {}}, "no models"),
    ({"models": {"m": "/nonexistent.onnx"}}, "does not exist"),
    ({"inputs": []}, "no inputs"),
    ({"runs": 0}, "runs >= 1"),
    ({"warmup": -1}, "warmup must be >= 0"),
    ({"min_time_s": -1.0}, "min_time_s must be between"),
])
def test_bad_requests_raise_one_line(models, cpu, kwargs, expected):
    call = {"models": {"small": models["small"]}, "inputs": token_inputs(1), "warmup": 1, "runs": 2,
            "min_time_s": 0.0} | kwargs
    with pytest.raises(EdgeslimError, match=expected):
        measure(cpu, call["models"], call["inputs"], warmup=call["warmup"], runs=call["runs"],
                min_time_s=call["min_time_s"])


@pytest.mark.slow
def test_instruction_count_covers_the_inference_only(models, cpu):
    import shutil

    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed (apt-get install valgrind)")
    inputs = token_inputs(2)
    cells = measure(cpu, {"small": models["small"]}, inputs, warmup=1, runs=3, instructions=True, memory=False)
    count = cells["small"]["instructions"]
    # the two 32x32 layers do 2 x 16 x 32 x 32 multiply-adds at length 16 (15 for the second
    # input); at most 8 fp32 multiply-adds per instruction under valgrind (AVX2) bounds it below.
    # Interpreter start-up and session creation are hundreds of millions of instructions, so a
    # count under 20 M is the inference alone.
    assert isinstance(count, int) and 2 * 15 * 32 * 32 / 8 < count < 20_000_000
    # a fresh process counts the same within the documented tolerance (docs/devices.md): exact on
    # some CPUs, a few instructions in 10^4 apart on others (kernels probe allocator state)
    again = count_instructions(cpu, models["small"], inputs)
    assert abs(again - count) <= INSTRUCTION_TOLERANCE * count
    assert cells["small"]["instructions_plan"] == {"inputs": 4, "passes": 3}


def test_the_count_plan_shrinks_with_the_model_and_is_shared_by_the_models_compared(tmp_path, models):
    """A small model is counted on 4 inputs x 3 passes; a larger one on fewer, so that its count
    stays under a minute on 2 cores; models counted together (a bench table, a baseline check) all
    get the plan of the largest, so their counts are over the same inputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeslim.targets.runners.local import COUNT_PLANS, CountPlan, count_plan

    def model_of(mib: float) -> Path:
        weight = np.zeros((int(mib * 2 ** 20 / 4 / 256), 256), dtype=np.float32)
        graph = helper.make_graph([helper.make_node("Gather", ["w", "i"], ["y"])], "g",
                                  [helper.make_tensor_value_info("i", TensorProto.INT64, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])],
                                  [numpy_helper.from_array(weight, "w")])
        path = tmp_path / f"m{mib}.onnx"
        onnx.save(helper.make_model(graph), str(path))
        return path

    assert count_plan([models["small"]]) == CountPlan(4, 3)
    assert count_plan([model_of(30)]) == CountPlan(4, 1)
    assert count_plan([model_of(90)]) == CountPlan(1, 1)
    assert count_plan([models["small"], model_of(30)]) == CountPlan(4, 1)
    assert [plan.inferences() for plan in COUNT_PLANS] == [21, 9, 5, 3]
