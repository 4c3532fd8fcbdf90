"""The ``distill`` stage: train a smaller student to behave like the teacher.

The student comes from :mod:`edgeslim.compress.students` (kept teacher layers, narrower widths, or any
HF model folder); the loss is a weighted sum of the terms in :mod:`edgeslim.compress.losses` chosen in
the recipe; the teacher's outputs come from the on-disk :mod:`edgeslim.compress.teacher_cache` (or the
live teacher where a loss needs something not cached); training is the resumable loop of
:mod:`edgeslim.compress.trainer`. See ``docs/distill.md`` for the YAML reference.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeslim.artifacts import Artifact, hash_bytes, hash_tree
from edgeslim.compress import losses as L
from edgeslim.compress.distill_config import DistillConfig, layers_value
from edgeslim.compress.fake_quant import fake_quantized
from edgeslim.compress.schedule import scheduled
from edgeslim.compress.student_shape import WIDTH_FIELDS, resolve_layers
from edgeslim.compress.students import build_student
from edgeslim.compress.torch_artifacts import auto_class, load_torch
from edgeslim.compress.teacher_cache import GenerationSpec, TeacherNeeds, cached_teacher, generate_rows, teacher_forward
from edgeslim.compress.train_state import clear_checkpoints, process_state
from edgeslim.compress.trainer import (
    TrainConfig,
    Trainable,
    examples_from_split,
    examples_from_texts,
    model_inputs,
    reindex,
    train,
)
from edgeslim.errors import EdgeslimError, first_line
from edgeslim.stage import StageContext

# ------------------------------------------------------------------------------ loss assembly


def auto_mapping(keep: list[int] | None, n_student: int, n_teacher: int) -> dict[int, int]:
    """Student block -> teacher block: the block it was copied from, else evenly spread (last to last)."""
    if keep is not None and len(keep) == n_student:
        return dict(enumerate(keep))
    return {s: round((s + 1) * n_teacher / n_student) - 1 for s in range(n_student)}


class DistillObjective:
    """The recipe's weighted sum of losses, as a ``loss_fn`` for :func:`edgeslim.compress.trainer.train`."""

    def __init__(self, config: DistillConfig, student: nn.Module, teacher: nn.Module, keep: list[int] | None,
                 token_level: bool, seed: int = 0):
        self.config = config
        self.token_level = token_level
        self.teacher = teacher
        losses = config.losses
        n_s, n_t = student.config.num_hidden_layers, teacher.config.num_hidden_layers
        self.hidden_map = self._mapping(losses.hidden, keep, n_s, n_t)
        self.attn_map = self._mapping(losses.attention, keep, n_s, n_t)
        hidden_needed = {t + 1 for t in self.hidden_map.values()}
        if losses.relation is not None:
            hidden_needed.add(n_t)
        top_k = losses.tokens.top_k if token_level and losses.tokens is not None else None
        self.needs = TeacherNeeds(tuple(sorted(hidden_needed)), tuple(sorted(set(self.attn_map.values()))), top_k,
                                  token_level, float(config.temperature) if top_k else 1.0)
        self.aux = nn.ModuleDict()
        d_s, d_t = student.config.hidden_size, teacher.config.hidden_size
        if self.hidden_map and d_s != d_t:
            torch.manual_seed(seed)
            for s in self.hidden_map:
                self.aux[f"hidden_{s}"] = nn.Linear(d_s, d_t, bias=False)
        self.cache = None

    @staticmethod
    def _mapping(loss, keep, n_s, n_t) -> dict[int, int]:
        if loss is None or loss.weight == 0:
            return {}
        if isinstance(loss.mapping, dict):
            return {int(s): int(t) for s, t in loss.mapping.items()}
        return auto_mapping(keep, n_s, n_t)

    def teacher_outputs(self, batch):
        return self.cache.lookup(batch) if self.cache is not None else teacher_forward(self.teacher, batch, self.needs)

    def __call__(self, model: Trainable, batch, fraction: float):
        losses = self.config.losses
        temperature = scheduled(self.config.temperature, fraction)
        alpha = scheduled(self.config.alpha, fraction)
        out = model.student(**model_inputs(batch), output_hidden_states=bool(self.hidden_map) or losses.relation is not None,
                            output_attentions=bool(self.attn_map))
        teacher = self.teacher_outputs(batch)
        mask = batch["attention_mask"]
        labels = batch.get("labels")
        parts: dict[str, torch.Tensor] = {}
        if self.token_level and losses.tokens is not None and losses.tokens.weight:
            parts["tokens"] = losses.tokens.weight * self._token_term(out.logits, teacher, batch, temperature, alpha)
        if not self.token_level and losses.logits is not None and losses.logits.weight:
            parts["logits"] = losses.logits.weight * L.logit_kd_loss(out.logits, teacher["logits"], labels, temperature, alpha)
        if self.hidden_map:
            terms = [L.hidden_loss(out.hidden_states[s + 1], teacher[f"hidden.{t + 1}"], mask, losses.hidden.kind,
                                   self._projection(model, s)) for s, t in self.hidden_map.items()]
            parts["hidden"] = losses.hidden.weight * torch.stack(terms).mean()
        if self.attn_map:
            terms = [L.attention_loss(out.attentions[s], teacher[f"attn.{t}"], mask, losses.attention.kind)
                     for s, t in self.attn_map.items()]
            parts["attention"] = losses.attention.weight * torch.stack(terms).mean()
        if losses.relation is not None and losses.relation.weight:
            n_t = self.teacher.config.num_hidden_layers
            s_emb = _pool(out.hidden_states[-1], mask, losses.relation.pooling)
            t_emb = _pool(teacher[f"hidden.{n_t}"], mask, losses.relation.pooling)
            parts["relation"] = losses.relation.weight * L.relation_loss(s_emb, t_emb, losses.relation.kind)
        if not parts:
            raise EdgeslimError("distill: every loss is off or has weight 0; enable at least one in losses")
        total = torch.stack(list(parts.values())).sum()
        return total, {k: float(v.detach()) for k, v in parts.items()}

    @staticmethod
    def _projection(model: Trainable, s: int):
        key = f"hidden_{s}"
        return model.aux[key] if key in model.aux else None

    def _token_term(self, logits, teacher, batch, temperature, alpha):
        tokens = self.config.losses.tokens
        labels = batch.get("labels")
        mask = L.shifted_token_mask(batch["attention_mask"])
        kd = L.token_divergence(logits, teacher.get("logits"), mask, tokens.kind, temperature, tokens.beta,
                                teacher.get("topk_values"), teacher.get("topk_indices"), teacher.get("topk_lse"))
        if labels is None or alpha >= 1.0 or bool((labels == L.IGNORE_INDEX).all()):
            return kd
        ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=L.IGNORE_INDEX)
        return alpha * kd + (1.0 - alpha) * ce


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "first":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


# ----------------------------------------------------------------------------------- the stage


def _needs_eager(config: DistillConfig) -> bool:
    return config.losses.attention is not None and config.losses.attention.weight > 0


def load_teacher(path: Path, task: str, eager: bool = False):
    """The teacher model and tokenizer from its torch artifact folder."""
    return load_torch(path, task, **({"attn_implementation": "eager"} if eager else {}))


def _main_process_first():
    return process_state().main_process_first()


def _teacher_id(artifact: Artifact) -> str:
    return artifact.manifest.get("key") or hash_tree(artifact.path)


def training_rows(config: DistillConfig, ctx: StageContext, teacher, tokenizer, cache_root: Path, teacher_id: str):
    """The examples the student trains on, per ``config.data``."""
    token_level = ctx.task == "causal-lm"
    data = ctx.data
    rows = []
    if config.data in ("labeled", "labeled+unlabeled"):
        rows += examples_from_split(data, tokenizer, "train", model=teacher)
    if config.data in ("unlabeled", "labeled+unlabeled"):
        texts = list(data.unlabeled) or [ex.text for ex in data.train]
        rows += examples_from_texts(texts, tokenizer, data.max_length, token_level, model=teacher)
    if config.data == "generated":
        gen = config.generation
        prompts = [ex.text for ex in data.train][: gen.num_prompts]
        spec = GenerationSpec(gen.max_new_tokens, gen.prompt_tokens, gen.do_sample, gen.temperature, gen.top_k, ctx.seed)
        rows += generate_rows(teacher, tokenizer, prompts, spec, cache_root, teacher_id, ctx.progress)
    if not rows:
        raise EdgeslimError(f"distill: data '{config.data}' gives no training examples; add data or change distill.data")
    return reindex(rows)


def rows_training_reaches(rows: list, config: DistillConfig, seed: int, log) -> list:
    """The rows training will read: all of them, or, where ``max_steps`` ends training within its first
    epoch, a seeded random ``max_steps x batch_size`` (x processes) of them, which is what the first
    epoch's shuffled order would take anyway. The teacher cache then computes only outputs that are
    read (38k tweets took the teacher 55 minutes; the 2,560 that 320 steps of 8 use take 4)."""
    if not config.max_steps:
        return rows
    needed = config.max_steps * config.batch_size * max(1, int(os.environ.get("WORLD_SIZE", "1")))
    if needed >= len(rows):
        return rows
    log(f"distill: {config.max_steps} steps of {config.batch_size} read {needed:,} of the {len(rows):,} training "
        "examples; the teacher runs on those")
    chosen = sorted(np.random.default_rng(seed).permutation(len(rows))[:needed].tolist())
    return reindex([rows[i] for i in chosen])


def _cache_root(ctx: StageContext) -> Path:
    """Where teacher outputs are kept across runs: ``ctx.extras['cache_dir']``, else a ``.distill``
    folder beside the stage folders (the stage's own output folder is temporary)."""
    root = ctx.extras.get("cache_dir")
    return Path(root) if root else Path(ctx.out_dir).parent / ".distill"


def _checkpoint_dir(ctx: StageContext, run_key: str) -> Path:
    """Where training checkpoints survive a killed stage: the pipeline's ``work_dir`` (keyed by the
    stage's cache key, removed when the stage finishes), else a folder keyed by this run's inputs."""
    if getattr(ctx, "work_dir", None) is not None:
        return Path(ctx.work_dir) / "checkpoints"
    return _cache_root(ctx) / "runs" / run_key


def make_student(config: DistillConfig, source: nn.Module, ctx: StageContext) -> nn.Module:
    """The student the config asks for, built from ``source`` (the stage's input model)."""
    from edgeslim.sources import resolve_model_source

    path = None
    if config.student is not None:
        path = resolve_model_source(config.student, getattr(ctx.recipe, "base_dir", None))
    width = {k: getattr(config, k) for k in WIDTH_FIELDS}
    try:
        student = build_student(source, layers_value(config.layers), path, auto_class(ctx.task), **width)
    except (ValueError, OSError) as exc:
        raise EdgeslimError(f"distill: {first_line(exc)}") from None
    if _needs_eager(config) and student.config._attn_implementation != "eager":
        student.set_attn_implementation("eager")  # attention maps are only returned by eager attention
    return student


def quantization_aware(student: nn.Module, config: DistillConfig, log):
    """The student seen through its 4-bit grid while it trains, when the recipe asks for it."""
    qat = config.quantization_aware
    if qat is None:
        return contextlib.nullcontext()
    log(f"distill: training through the 4-bit {qat.grid} grid, blocks of {qat.block_size} (quantization-aware)")
    return fake_quantized(student, qat.block_size, qat.grid)


def train_config(config: DistillConfig, ctx: StageContext, run_key: str) -> TrainConfig:
    return TrainConfig(
        epochs=config.epochs, max_steps=config.max_steps, lr=config.lr, batch_size=config.batch_size,
        weight_decay=config.weight_decay, warmup_ratio=config.warmup_ratio, seed=ctx.seed,
        checkpoint_dir=_checkpoint_dir(ctx, run_key), checkpoint_every=config.checkpoint_every,
        eval_every=config.eval_every, early_stopping_patience=config.early_stopping_patience,
        select_best=config.select_best,
    )


def run(config: DistillConfig, artifact: Artifact, ctx: StageContext) -> Artifact:
    """Build the student from the input model, distil the teacher into it, save it with the tokenizer."""
    if ctx.teacher is None:
        raise EdgeslimError("distill needs the teacher stage before it in the recipe")
    task, eager = ctx.task, _needs_eager(config)
    torch.manual_seed(ctx.seed)
    teacher, tokenizer = load_teacher(ctx.teacher.path, task, eager)
    from_teacher = Path(artifact.path) == Path(ctx.teacher.path)
    source = teacher if from_teacher else load_teacher(artifact.path, task, eager)[0]
    try:
        config.check_against(source.config, task)
    except ValueError as exc:
        raise EdgeslimError(f"distill: {exc}") from None
    student = make_student(config, source, ctx)
    keep = resolve_layers(layers_value(config.layers), source.config.num_hidden_layers) \
        if from_teacher and config.student is None else None
    objective = DistillObjective(config, student, teacher, keep, task == "causal-lm", ctx.seed)

    cache_root = _cache_root(ctx) / "teacher"
    teacher_id = _teacher_id(ctx.teacher)
    with _main_process_first():  # under accelerate launch, rank 0 fills the caches, the others read them
        available = training_rows(config, ctx, teacher, tokenizer, cache_root, teacher_id)
        rows = rows_training_reaches(available, config, ctx.seed, ctx.log)
        if config.cache_teacher:
            objective.cache = cached_teacher(teacher, rows, objective.needs, cache_root, teacher_id,
                                             config.batch_size, ctx.progress, ctx.log)
    eval_rows = examples_from_split(ctx.data, tokenizer, "eval", model=teacher)
    run_key = hash_bytes(teacher_id, "" if from_teacher else hash_tree(artifact.path), config.model_dump_json(),
                         str(ctx.seed), getattr(ctx.data, "fingerprint", ""))[:24]
    train_cfg = train_config(config, ctx, run_key)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with quantization_aware(student, config, ctx.log):
        result = train(student, rows, objective, train_cfg, eval_rows=eval_rows, aux=objective.aux,
                       progress=ctx.progress, log=ctx.log, pad_token_id=pad_id)
    student.eval()
    student.save_pretrained(ctx.out_dir)
    tokenizer.save_pretrained(ctx.out_dir)
    clear_checkpoints(train_cfg.checkpoint_dir)
    metrics = dict(result.metrics)
    metrics.update(train_steps=result.steps, stopped_early=result.stopped_early, best_step=result.best_step,
                   student_params=sum(p.numel() for p in student.parameters()),
                   student_layers=student.config.num_hidden_layers)
    return Artifact(Path(ctx.out_dir), "torch", {"metrics": metrics, "history": result.history,
                                                 "resumed_from_step": result.resumed_from,
                                                 "train_examples": len(available), "train_examples_read": len(rows),
                                                 "data": config.data,
                                                 "quantization_aware": config.quantization_aware.model_dump()
                                                 if config.quantization_aware else None})
