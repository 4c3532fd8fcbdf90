"""The ``distill`` stage's recipe keys (see docs/distill.md) and its registration.

Torch-free, so ``edgeslim check`` reads and checks a recipe without importing torch; the stage itself
is :func:`edgeslim.compress.distill.run`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgeslim.families import shares_layers
from edgeslim.compress.schedule import Schedule, schedule_values
from edgeslim.compress.student_shape import WIDTH_FIELDS, resolve_layers
from edgeslim.stage import StageConfig, register_stage

LayerMapping = dict[int, int] | Literal["auto"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Every(_Strict):
    """Keep every k-th teacher layer, counting back from the last one."""

    every: int = Field(ge=1)


class LogitsLoss(_Strict):
    """Sequence-classification logit KD (``temperature`` and ``alpha`` are the stage's)."""

    weight: float = Field(1.0, ge=0)


class TokensLoss(_Strict):
    """Causal-LM per-token KD: forward KL, reverse KL or generalised JSD, on the full vocabulary or
    the teacher's ``top_k`` tokens (also what the teacher cache keeps)."""

    weight: float = Field(1.0, ge=0)
    kind: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    beta: float = Field(0.5, gt=0, lt=1)
    top_k: int | None = Field(None, ge=1)


class HiddenLoss(_Strict):
    """Hidden-state MSE or cosine over ``mapping`` (student block -> teacher block; ``auto`` pairs
    each student block with the teacher block it was copied from, or spreads them evenly)."""

    weight: float = Field(1.0, ge=0)
    kind: Literal["mse", "cosine"] = "mse"
    mapping: LayerMapping = "auto"


class AttentionLoss(_Strict):
    """Attention-map KL or MSE over ``mapping`` (heads averaged when the counts differ)."""

    weight: float = Field(1.0, ge=0)
    kind: Literal["kl", "mse"] = "kl"
    mapping: LayerMapping = "auto"


class RelationLoss(_Strict):
    """Relations between the batch's sentence embeddings (first token or mean of the last layer):
    RKD ``distance`` or ``angle``, or ``similarity``-matrix MSE."""

    weight: float = Field(1.0, ge=0)
    kind: Literal["distance", "angle", "similarity"] = "distance"
    pooling: Literal["first", "mean"] = "first"


class Losses(_Strict):
    """Which knowledge is transferred, each with its weight; a loss that is absent is off."""

    logits: LogitsLoss | None = LogitsLoss()
    tokens: TokensLoss | None = TokensLoss()
    hidden: HiddenLoss | None = None
    attention: AttentionLoss | None = None
    relation: RelationLoss | None = None


class Generation(_Strict):
    """Teacher-generated training text for causal LMs: seed prompts are the train texts' first
    ``prompt_tokens`` tokens; the teacher continues each one ``max_new_tokens`` tokens."""

    max_new_tokens: int = Field(32, ge=1)
    prompt_tokens: int = Field(16, ge=1)
    do_sample: bool = True
    temperature: float = Field(1.0, gt=0)
    top_k: int | None = Field(50, ge=1)
    num_prompts: int | None = Field(None, ge=1)


class QuantizationAware(_Strict):
    """Train the student through the 4-bit weight grid the quantize stage will write
    (:mod:`edgeslim.compress.fake_quant`): ``offset`` for ``quantize.algorithm: offset``,
    ``asymmetric`` / ``symmetric`` for ``rtn`` without / with ``symmetric: true``; ``block_size`` as
    the quantize stage's."""

    grid: Literal["offset", "asymmetric", "symmetric"] = "offset"
    block_size: int = Field(32, ge=16)

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value):
        if value & (value - 1):
            raise ValueError("block_size must be a power of 2 (16, 32, 64, 128), as MatMulNBits needs")
        return value


class DistillConfig(StageConfig):
    """The ``distill`` stage's recipe keys (see docs/distill.md)."""

    # the student
    layers: Every | list[int] | None = Every(every=2)
    hidden_size: int | None = Field(None, ge=1)
    num_attention_heads: int | None = Field(None, ge=1)
    intermediate_size: int | None = Field(None, ge=1)
    num_key_value_heads: int | None = Field(None, ge=1)
    student: str | None = None
    # the objective
    temperature: float | Schedule = 2.0
    alpha: float | Schedule = 0.5
    losses: Losses = Losses()
    # the data
    data: Literal["labeled", "unlabeled", "labeled+unlabeled", "generated"] = "labeled"
    generation: Generation = Generation()
    cache_teacher: bool = True
    # training
    epochs: int = Field(3, ge=1)
    max_steps: int | None = Field(None, ge=1)
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(16, ge=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    checkpoint_every: int = Field(200, ge=0)
    eval_every: int | None = Field(None, ge=1)
    early_stopping_patience: int | None = Field(None, ge=1)
    select_best: bool = True
    quantization_aware: QuantizationAware | None = None

    @field_validator("temperature")
    @classmethod
    def _positive_temperature(cls, value):
        if any(v <= 0 for v in schedule_values(value)):
            raise ValueError("temperature must be > 0 (try 1.0 to 4.0)")
        return value

    @field_validator("alpha")
    @classmethod
    def _alpha_fraction(cls, value):
        if any(not 0.0 <= v <= 1.0 for v in schedule_values(value)):
            raise ValueError("alpha (weight of the soft-label term) must be between 0 and 1")
        return value

    @model_validator(mode="after")
    def _one_student_kind(self):
        if self.student is not None and any(getattr(self, k) is not None for k in WIDTH_FIELDS):
            raise ValueError("give either 'student' (a model used as is) or narrower widths, not both")
        return self

    @model_validator(mode="after")
    def _top_k_needs_constant_temperature(self):
        tokens = self.losses.tokens
        if tokens is not None and tokens.top_k is not None and not isinstance(self.temperature, (int, float)):
            raise ValueError("losses.tokens.top_k needs a constant temperature (the teacher cache keeps its "
                             "normaliser at that temperature); give one number or drop top_k")
        return self

    def check_against(self, model_config: Any, task: str) -> None:
        """Checks that need the teacher's config: layer indices, mappings, top-k vs vocabulary."""
        if task == "text-classification" and self.data == "generated":
            raise ValueError("data: generated needs task causal-lm; use labeled or unlabeled")
        if model_config is None:
            return
        n_teacher = model_config.num_hidden_layers
        model_type = getattr(model_config, "model_type", None)
        if self.student is None and self.layers is not None and shares_layers(model_type):
            raise ValueError(f"'{model_type}' shares one set of weights across its {n_teacher} layers, so there are no "
                             "layers to select; set layers: null and give narrower widths, or a student folder")
        if self.student is None:
            resolve_layers(layers_value(self.layers), n_teacher)
        n_student = self.student_layer_count(n_teacher)
        for name in ("hidden", "attention"):
            loss = getattr(self.losses, name)
            if loss is not None and isinstance(loss.mapping, dict):
                for s, t in loss.mapping.items():
                    if not 0 <= t < n_teacher:
                        raise ValueError(f"losses.{name}.mapping: teacher layer {t} does not exist (teacher has 0..{n_teacher - 1})")
                    if n_student is not None and not 0 <= s < n_student:
                        raise ValueError(f"losses.{name}.mapping: student layer {s} does not exist (student has 0..{n_student - 1})")
        tokens = self.losses.tokens
        vocab = getattr(model_config, "vocab_size", None)
        if tokens is not None and tokens.top_k is not None and vocab is not None and tokens.top_k > vocab:
            raise ValueError(f"losses.tokens.top_k {tokens.top_k} is larger than the vocabulary ({vocab})")

    def student_layer_count(self, n_teacher: int) -> int | None:
        if self.student is not None:
            return None
        return len(resolve_layers(layers_value(self.layers), n_teacher))


def layers_value(layers: Every | list[int] | None):
    return {"every": layers.every} if isinstance(layers, Every) else layers


register_stage("distill", config=DistillConfig, function="edgeslim.compress.distill:run", consumes="torch",
               produces="torch", trains=True, before={"vocab": "distill feeds the student the teacher's token ids"})
