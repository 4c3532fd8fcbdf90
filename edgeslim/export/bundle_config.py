"""The ``bundle`` stage's recipe keys (see docs/export.md) and its registration.

Free of torch and onnxruntime, so ``edgeslim check`` reads and checks a recipe quickly; the stage itself
is :func:`edgeslim.export.mobile.run`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edgeslim.stage import StageConfig, register_stage


class BundleConfig(StageConfig):
    """Recipe keys of stage ``bundle``."""

    ort_format: bool = Field(True, description="write model.ort + required_operators.config for mobile builds")
    ort_target_platform: Literal["arm", "amd64"] = Field(
        "arm", description="platform the fixed ORT-format optimizations target (arm for phones and boards)")
    tokenizer_in_graph: bool = Field(True, description="write model_with_tokenizer.onnx (text-classification)")
    mobile_check: bool = Field(True, description="run onnxruntime's NNAPI/CoreML usability checker")
    title: str | None = Field(None, description="model card title (default: the recipe name)")


register_stage("bundle", config=BundleConfig, function="edgeslim.export.mobile:run", consumes="onnx", produces="bundle")
