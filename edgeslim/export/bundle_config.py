"""The ``bundle`` stage's recipe keys (see docs/export.md) and its registration.

Free of torch and onnxruntime, so ``edgeslim check`` reads and checks a recipe quickly; the stage itself
is :func:`edgeslim.export.mobile.run`.
"""

from __future__ import annotations

from typing import Any, Literal

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
    fixed_shape: bool = Field(False, description="also write model_fixed.ort: batch 1, fixed length, int32 inputs, "
                                                 "operators NNAPI and CoreML run (text-classification)")
    fixed_length: int | None = Field(None, ge=1, le=8192,
                                     description="sequence length of model_fixed.ort (default: data.max_length)")
    fixed_atol: float = Field(5e-3, gt=0, description="largest logit difference model_fixed.ort may have from the "
                                                      "dynamic fp32 export (its GELU is the tanh form)")

    def check_against(self, model_config: Any, task: str) -> None:
        if self.fixed_shape and task != "text-classification":
            raise ValueError(f"fixed_shape is for text-classification bundles, not {task}; set bundle.fixed_shape: false")
        positions = getattr(model_config, "max_position_embeddings", None)
        if self.fixed_shape and self.fixed_length and isinstance(positions, int) and self.fixed_length > positions:
            raise ValueError(f"fixed_length {self.fixed_length} is longer than the model's {positions} positions; "
                             f"use at most {positions}")


register_stage("bundle", config=BundleConfig, function="edgeslim.export.mobile:run", consumes="onnx", produces="bundle")
