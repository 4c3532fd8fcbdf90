"""The ``recovery`` key that prune, lowrank and vocab share (torch-free, so recipes are checked
without importing torch; :func:`edgeslim.compress.torch_artifacts.recover` runs it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Recovery(BaseModel):
    """Short logit-KD against the teacher after a compress stage; ``steps: 0`` turns it off."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(0, ge=0)
    lr: float = Field(5e-5, gt=0)
    batch_size: int = Field(16, ge=1)
    temperature: float = Field(2.0, gt=0)
