"""The local runner: measure on this machine, in a separate process set to the profile's threads.

A separate process keeps the measurement away from whatever the caller has loaded (torch, a big
tokenizer) and lets the thread count and CPU affinity be set before onnxruntime starts. All models
are timed in one process, interleaved (see ``edgeslim.targets.harness``). Optionally the instruction
count per inference is taken under callgrind: a figure that does not move with machine load, so CI
can gate on it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgeslim.targets.profile import DeviceProfile
from edgeslim.targets.runners.job import HARNESS, cells_for_all, cells_from_result, one_line, write_inputs, write_spec

TIMEOUT_S = 1800


def harness_env(profile: DeviceProfile) -> dict[str, str]:
    """Environment for the harness: thread counts fixed, hashing deterministic."""
    env = dict(os.environ)
    threads = str(profile.runtime.threads)
    env.update({"OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                "PYTHONHASHSEED": "0"})
    return env


def run_harness(command: list[str], workdir: Path, env: dict[str, str], timeout_s: int,
                result_name: str = "result.json") -> dict:
    """Run the harness command; return its JSON result or raise RuntimeError with one line."""
    try:
        proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"harness timed out after {timeout_s} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"harness failed (exit {proc.returncode}): {one_line(proc.stderr or proc.stdout)}")
    return json.loads((workdir / result_name).read_text(encoding="utf-8"))


def measure(profile: DeviceProfile, models: dict[str, Path], inputs: list[dict[str, np.ndarray]], *,
            warmup: int, runs: int, status: str = "measured", providers: list[str] | None = None,
            instructions: bool = False, memory: bool = True, samples: bool = False,
            timeout_s: int = TIMEOUT_S) -> dict[str, dict]:
    """Measure every model on this machine; one cell per model."""
    with tempfile.TemporaryDirectory(prefix="edgeslim-local-") as tmp:
        work = Path(tmp)
        inputs_path = write_inputs(work / "inputs.npz", inputs)
        spec = write_spec(work / "spec.json", profile, {n: str(Path(p).resolve()) for n, p in models.items()},
                          str(inputs_path), warmup=warmup, runs=runs, memory=memory, providers=providers,
                          samples=samples)
        try:
            result = run_harness([sys.executable, str(HARNESS), str(spec), "result.json"], work,
                                 harness_env(profile), timeout_s)
        except RuntimeError as exc:
            return cells_for_all(models, "error", str(exc))
        cells = cells_from_result(result, status)
    if instructions:
        for name, path in models.items():
            if cells[name]["status"] == status:
                cells[name]["instructions"] = count_instructions(profile, Path(path), inputs)
    return cells


def count_instructions(profile: DeviceProfile, model: Path, inputs: list[dict[str, np.ndarray]], *,
                       runs: int = 3, timeout_s: int = TIMEOUT_S) -> int | None:
    """Instructions per inference under callgrind, counting only the inference loop; None without valgrind.

    Runs on one intra-op thread whatever the profile says, and counts the main thread only:
    onnxruntime's and Python's helper threads do work that varies with scheduling, and the figure is
    meant to be identical run to run.
    """
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    single = profile.model_copy(update={"runtime": profile.runtime.model_copy(update={"threads": 1, "inter_op_threads": 1})})
    with tempfile.TemporaryDirectory(prefix="edgeslim-callgrind-") as tmp:
        work = Path(tmp)
        inputs_path = write_inputs(work / "inputs.npz", inputs)
        spec = write_spec(work / "spec.json", single, {"model": str(model.resolve())}, str(inputs_path),
                          warmup=1, runs=runs, mode="count", memory=False)
        command = [valgrind, "--tool=callgrind", "--separate-threads=yes", "--zero-before=getloadavg",
                   "--dump-before=ctermid", f"--callgrind-out-file={work / 'callgrind.out'}",
                   sys.executable, str(HARNESS), str(spec), "result.json"]
        run_harness(command, work, harness_env(single), timeout_s)
        loop_dump = work / "callgrind.out.1-01"  # part 1 (the dump at ctermid) of thread 1 (the main thread)
        total = _callgrind_total(loop_dump) if loop_dump.is_file() else None
    return None if total is None else round(total / runs)


def _callgrind_total(path: Path) -> int | None:
    """The instructions (Ir) collected in a callgrind output file, from its ``summary:`` line."""
    text = path.read_text(encoding="utf-8", errors="replace")
    match = re.search(r"^summary:\s+(\d+)", text, flags=re.MULTILINE)
    return int(match.group(1)) if match else None
