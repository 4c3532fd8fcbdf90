"""The ``export`` stage's recipe keys (see docs/export.md) and its registration.

Free of torch and onnxruntime, so ``edgeslim check`` reads and checks a recipe quickly; the stage itself
is :func:`edgeslim.export.onnx.run`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from edgeslim.stage import StageConfig, register_stage

DEFAULT_OPSET = 18
# edgeslim task -> Optimum exporter task.
OPTIMUM_TASKS = {"text-classification": "text-classification", "causal-lm": "text-generation-with-past"}


class ExportConfig(StageConfig):
    """Recipe keys of stage ``export``."""

    opset: int = Field(DEFAULT_OPSET, ge=14, le=23, description="ONNX opset of the exported graph")
    exporter: Literal["auto", "optimum", "dynamo"] = Field(
        "auto", description="auto: Optimum where it knows the architecture, torch.onnx dynamo otherwise")
    fusions: bool = Field(True, description="apply onnxruntime transformer fusions (attention, layer norm, GELU)")
    slim: bool = Field(True, description="run onnxslim and keep its result when it removes nodes")
    atol: float = Field(1e-3, gt=0, description="parity: absolute tolerance per element")
    rtol: float = Field(1e-3, ge=0, description="parity: tolerance relative to the torch value")
    parity_batches: int = Field(4, ge=0, description="real eval batches checked for parity")
    decode_steps: int = Field(2, ge=0, description="causal LM: cached single-token steps checked per case")

    def check_against(self, model_config: Any, task: str) -> None:
        if self.exporter == "optimum" and model_config is not None:
            model_type = getattr(model_config, "model_type", None)
            if not optimum_supports(model_type, task):
                raise ValueError(f"Optimum cannot export model type '{model_type}' for {task}; set export.exporter: auto or dynamo")


def optimum_supports(model_type: str | None, task: str) -> bool:
    """Whether Optimum's ONNX exporter has a config for ``model_type`` and edgeslim ``task``."""
    import optimum.exporters.onnx.model_configs  # noqa: F401  (fills Optimum's exporter registry)
    from optimum.exporters.tasks import TasksManager

    if not model_type or task not in OPTIMUM_TASKS:
        return False
    for name in dict.fromkeys((model_type, model_type.replace("_", "-"), model_type.replace("-", "_"))):
        try:
            tasks = TasksManager.get_supported_tasks_for_model_type(name, "onnx", library_name="transformers")
        except KeyError:
            continue
        return OPTIMUM_TASKS[task] in tasks
    return False


register_stage("export", config=ExportConfig, function="edgeslim.export.onnx:run", consumes="torch", produces="onnx")
