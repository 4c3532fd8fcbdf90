"""What coordinates and outlives a training run: the process group, the last checkpoint, the best
weights so far, and their removal once the stage has its artifact.

The last checkpoint is ``accelerator.save_state`` (weights, optimizer, RNG states) plus the loop's
own state as JSON, written atomically so a kill during the write leaves the previous one; the best
weights of the evaluations so far are kept beside it, so a resumed run still selects them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from edgeslim.artifacts import atomic_dir, atomic_write_json


def process_state():
    """This process's place in an ``accelerate launch``/``torchrun`` job (one process when run plainly).

    Created with ``cpu=True`` when there is no GPU, so several CPU processes form a gloo group."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


LOOP_STATE = "loop_state.json"
LAST = "last"
BEST = "best"


def _latest_checkpoint(root: Path | None) -> Path | None:
    if root is None or not (root / LAST / LOOP_STATE).exists():
        return None
    return root / LAST


def save_checkpoint(accelerator, root: Path, state: dict[str, Any]) -> None:
    """Write the last checkpoint atomically: a kill during the write leaves the previous one.

    Every process joins ``save_state`` (each saves its own RNG state); the main process then
    renames the finished folder into place.
    """
    tmp, last = root / ".last.tmp", root / LAST
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / LOOP_STATE, state)
        old = root / ".last.old"
        shutil.rmtree(old, ignore_errors=True)
        if last.exists():
            last.rename(old)
        tmp.rename(last)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


class BestWeights:
    """The best evaluated student weights: in ``checkpoint_dir/best`` (so a resumed run still has
    them) or, without a checkpoint folder, in memory."""

    def __init__(self, root: Path | None):
        self.root = root
        self.state: dict[str, torch.Tensor] | None = None

    def keep(self, model: "torch.nn.Module", is_main: bool) -> None:
        state = {k: v.detach().cpu().clone() for k, v in model.student.state_dict().items()}
        if self.root is None:
            self.state = state
        elif is_main:
            from safetensors.torch import save_file

            with atomic_dir(self.root / BEST) as tmp:
                save_file(_untie(state), str(tmp / "student.safetensors"))

    def restore(self, model: "torch.nn.Module") -> None:
        if self.root is None:
            model.student.load_state_dict(self.state)
            return
        from safetensors.torch import load_file

        model.student.load_state_dict(load_file(str(self.root / BEST / "student.safetensors")), strict=False)


def _untie(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied embeddings): give each its own copy."""
    seen: set[int] = set()
    out = {}
    for key, value in state.items():
        ptr = value.data_ptr()
        out[key] = value.clone() if ptr in seen else value
        seen.add(ptr)
    return out


def resume(accelerator, root: Path | None, log) -> tuple[dict[str, Any], int | None]:
    """The loop's state: fresh, or restored (with weights, optimizer and RNG) from the last checkpoint."""
    checkpoint = _latest_checkpoint(root)
    if checkpoint is None:
        return {"step": 0, "best_metric": None, "best_step": None, "bad_evals": 0, "history": [],
                "stopped_early": False}, None
    accelerator.load_state(str(checkpoint))
    loop = json.loads((checkpoint / LOOP_STATE).read_text())
    if log:
        log(f"resuming training from step {loop['step']} ({checkpoint})")
    return loop, loop["step"]


def clear_checkpoints(root: Path | None) -> None:
    """Remove a finished run's checkpoints (the stage's output artifact is what is kept).

    Under a multi-process launch the folder is shared: only rank 0 removes it, and ``train`` has
    already waited for every rank, so no rank is still reading or writing it."""
    if root is not None and process_state().is_main_process:
        shutil.rmtree(root, ignore_errors=True)
