"""The cuda runner: the local harness with onnxruntime's CUDA execution provider.

Needs an onnxruntime build that has ``CUDAExecutionProvider`` (the ``onnxruntime-gpu`` wheel) and a
visible GPU. Without them every cell is ``skipped`` with the reason, never a CPU figure passed off
as a GPU one: a cell whose session did not activate the CUDA provider (onnxruntime falls back to
the CPU silently when it fails to load) is an ``error``, and each measured cell records the share of
its nodes onnxruntime placed on each provider (``node_placement``), since nodes CUDA has no kernel
for run on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeslim.targets.profile import DeviceProfile
import edgeslim.targets.runners.local as local
from edgeslim.targets.runners.job import cells_for_all

CUDA = "CUDAExecutionProvider"


def unavailable_reason() -> str | None:
    """Why CUDA cannot be used here, or None when onnxruntime has the CUDA provider."""
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    if CUDA not in providers:
        return (f"onnxruntime {onnxruntime.__version__} has no {CUDA} (available: {', '.join(providers)}); "
                "install onnxruntime-gpu on a machine with an NVIDIA GPU")
    return None


def measure(profile: DeviceProfile, models: dict[str, Path], inputs: list[dict[str, np.ndarray]], *,
            warmup: int, runs: int, memory: bool = True, samples: bool = False,
            min_time_s: float = 0.0, model_inputs=None, mode: str = "latency", new_tokens: int = 20) -> dict[str, dict]:
    reason = unavailable_reason()
    if reason is not None:
        return cells_for_all(models, "skipped", reason)
    return local.measure(profile, models, inputs, warmup=warmup, runs=runs, providers=[CUDA, "CPUExecutionProvider"],
                         memory=memory, samples=samples, min_time_s=min_time_s, model_inputs=model_inputs,
                         node_placement=mode == "latency", mode=mode, new_tokens=new_tokens)
