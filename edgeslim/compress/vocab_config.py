"""The ``vocab`` stage's recipe keys (see docs/compress.md) and its registration.

Torch-free, so ``edgeslim check`` reads and checks a recipe without importing torch; the stage itself
is :func:`edgeslim.compress.vocab.run`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from edgeslim.compress.recovery_config import Recovery
from edgeslim.stage import StageConfig, register_stage


class VocabConfig(StageConfig):
    """Which texts decide the vocabulary and how much of it is kept."""

    sources: list[Literal["train", "eval", "unlabeled"]] = Field(default_factory=lambda: ["train", "unlabeled"])
    min_count: int = Field(1, ge=1, description="keep tokens seen at least this often")
    max_tokens: int | None = Field(None, description="keep at most this many data tokens (most frequent)")
    keep_tokens: list[str] = Field(default_factory=list, description="tokens always kept (vocabulary strings)")
    recovery: Recovery = Recovery()

    @field_validator("sources")
    @classmethod
    def _some_sources(cls, value):
        if not value:
            raise ValueError("an empty vocabulary: sources must name at least one of train, eval, unlabeled")
        return value

    @field_validator("max_tokens")
    @classmethod
    def _positive(cls, value):
        if value is not None and value < 1:
            raise ValueError("max_tokens must be at least 1 (0 would leave an empty vocabulary)")
        return value

    def check_against(self, model_config: Any, task: str) -> None:
        if model_config is not None and self.max_tokens is not None:
            size = getattr(model_config, "vocab_size", None)
            if size is not None and self.max_tokens >= size:
                raise ValueError(f"max_tokens {self.max_tokens} is not below the vocabulary size ({size}); "
                                 "nothing would be trimmed")


register_stage("vocab", config=VocabConfig, function="edgeslim.compress.vocab:run", consumes="torch",
               produces="torch")
