"""Runners: measure a set of ONNX models on one device profile and return one report cell per model.

``measure`` is the one entry point. It picks the runner from ``profile.access.kind`` (``local``,
``qemu-arm``, ``ssh``, ``cuda``; ``none`` gives a roofline prediction) and never raises because a
device is unreachable or unusable: that model x device cell gets status ``error`` or ``skipped`` with
the reason, so the rest of a benchmark matrix goes on. Bad input (a missing model file, no inputs)
is the caller's to fix and raises ``EdgeslimError``.

A cell is ``{"status", "latency_ms": {"p50", "p90", "p99", "mean", "n"}, "throughput" (inferences per
second, one stream), "peak_memory_mb", "reason"}`` plus runner-specific fields (``instructions``;
``max_abs_diff`` and ``outputs_match`` for emulated parity; ``predicted_latency_ms``; ``cpu_ms``, the
measuring thread's CPU time per inference, percentiles like ``latency_ms``: with one intra-op thread
it excludes time spent preempted, so it is the steadier figure on a loaded machine).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeslim.errors import EdgeslimError
from edgeslim.targets.profile import DeviceProfile
from edgeslim.errors import last_line
from edgeslim.targets.runners.job import STATUSES, cell, cells_for_all

__all__ = ["measure", "cell", "STATUSES"]


def _check_request(models: dict[str, Path], inputs: list[dict[str, np.ndarray]], warmup: int, runs: int,
                   min_time_s: float) -> None:
    if not models:
        raise EdgeslimError("no models to measure; pass at least one ONNX file")
    for name, path in models.items():
        if not Path(path).is_file():
            raise EdgeslimError(f"model '{name}': ONNX file '{path}' does not exist")
    if not inputs or not all(isinstance(example, dict) and example for example in inputs):
        raise EdgeslimError("no inputs to measure with; give at least one {input name: array} example")
    if warmup < 0 or runs < 1:
        raise EdgeslimError(f"warmup must be >= 0 and runs >= 1 (got warmup={warmup}, runs={runs})")
    if not 0 <= min_time_s <= 3600:
        raise EdgeslimError(f"min_time_s must be between 0 and 3600 seconds (got {min_time_s})")


def measure(profile: DeviceProfile, models: dict[str, Path], inputs: list[dict[str, np.ndarray]], *,
            warmup: int = 10, runs: int = 100, instructions: bool = False, memory: bool = True,
            samples: bool = False, min_time_s: float = 0.0,
            model_inputs: dict[str, list[dict[str, np.ndarray]]] | None = None,
            references: dict[str, Path] | None = None, labels: list[int] | None = None,
            mode: str = "latency", new_tokens: int = 20) -> dict[str, dict]:
    """Measure ``models`` (name -> ONNX file) on ``profile`` with the same ``inputs``; one cell per model.

    At least ``runs`` timed inferences per model after ``warmup`` untimed ones, more until the timed
    part has lasted ``min_time_s`` (so fast models get enough samples for a stable p99);
    ``instructions`` adds the
    callgrind instruction count per inference (local runner, where valgrind is installed);
    ``memory`` the peak-memory pass; ``samples`` keeps every timed latency (``samples_ms``, in run
    order) for noise estimates such as the baseline comparison. ``model_inputs`` gives some models
    their own inputs for the same examples (local and cuda runners: still timed interleaved).
    ``references`` (model -> its fp32 source) and ``labels`` (one per input) make an emulated cell
    score both sides against the fp32 model and the task (qemu and ssh runners). ``mode="decode"``
    generates ``new_tokens`` greedy tokens per input (causal-LM decoders; each input is a prompt's
    ``input_ids``): prefill latency, decode ms per token and tokens/s, and on emulated devices whether
    the greedy tokens match this host's.
    """
    _check_request(models, inputs, warmup, runs, min_time_s)
    if mode not in ("latency", "decode"):
        raise EdgeslimError(f"measure mode must be 'latency' or 'decode', not {mode!r}")
    kind = profile.access.kind
    work = {"mode": mode, "new_tokens": new_tokens}
    try:
        if kind == "local":
            from edgeslim.targets.runners import local

            return local.measure(profile, models, inputs, warmup=warmup, runs=runs,
                                 instructions=instructions and mode == "latency", memory=memory, samples=samples,
                                 min_time_s=min_time_s, model_inputs=model_inputs, **work)
        if kind == "cuda":
            from edgeslim.targets.runners import cuda

            return cuda.measure(profile, models, inputs, warmup=warmup, runs=runs, memory=memory, samples=samples,
                                min_time_s=min_time_s, model_inputs=model_inputs, **work)
        if kind == "qemu-arm":
            from edgeslim.targets.runners import qemu

            return qemu.measure(profile, models, inputs, references=references, labels=labels, **work)
        if kind == "ssh":
            from edgeslim.targets.runners import ssh

            return ssh.measure(profile, models, inputs, warmup=warmup, runs=runs, memory=memory, samples=samples,
                               min_time_s=min_time_s, references=references, labels=labels, **work)
        if mode == "decode":
            return cells_for_all(models, "skipped", "no latency prediction for decoders yet: measure on the device "
                                                    "(local, ssh) or emulate it (qemu-arm)")
        from edgeslim.targets.predict import predict_cells

        return predict_cells(profile, models, inputs)
    except EdgeslimError:
        raise
    except Exception as exc:  # a device problem must not stop the matrix
        return cells_for_all(models, "error", f"{kind} runner failed: {type(exc).__name__}: {last_line(str(exc))}")
