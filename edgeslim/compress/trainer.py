"""A small, resumable training loop under ``accelerate``, and the fine-tune / KD-recovery helpers
that several stages share.

Why not ``transformers.Trainer``: distillation needs a second model (or its cached outputs), extra
trainable modules (hidden-state projections) and a loss that mixes several terms, and a killed run
must resume bit-for-bit. The loop here is deterministic by construction: the batches of step ``s``
are a pure function of (seed, s), the learning rate is a pure function of s, and a checkpoint
(``accelerator.save_state``: weights, optimizer, RNG states) plus a small JSON of the loop's own
state is everything needed to continue. One CPU process by default; ``accelerate launch`` runs the
same loop data-parallel on several GPUs or nodes (each process takes every n-th batch of a step).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from edgeslim.compress.losses import IGNORE_INDEX, soft_kl, token_divergence
from edgeslim.compress.train_state import BestWeights, process_state, resume, save_checkpoint

Example = dict[str, Any]
Batch = dict[str, torch.Tensor]
LossFn = Callable[["Trainable", Batch, float], "tuple[torch.Tensor, dict[str, float]]"]

# ------------------------------------------------------------------------------------------ data


def is_token_level(model: nn.Module) -> bool:
    """True for causal LMs (per-token logits), False for sequence classifiers."""
    names = getattr(model.config, "architectures", None) or [type(model).__name__]
    return any(name.endswith("ForCausalLM") or name.endswith("LMHeadModel") for name in names) or (
        type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))
    )


def _unpad_rows(batch: Batch, start_index: int) -> list[Example]:
    """Split a padded batch into per-example tensors holding only real tokens."""
    rows = []
    mask = batch["attention_mask"].bool()
    for i in range(mask.shape[0]):
        keep = mask[i]
        row: Example = {"index": start_index + i}
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            if key in batch:
                row[key] = batch[key][i][keep].clone()
        if "labels" in batch:
            labels = batch["labels"][i]
            row["labels"] = labels[keep].clone() if labels.dim() == 1 else int(labels)
        rows.append(row)
    return rows


def drop_unused_inputs(rows: list[Example], model: nn.Module | None) -> list[Example]:
    """Remove ``token_type_ids`` when the model does not take them (decoders given a BERT-style
    tokenizer), so one tokenizer's output feeds any architecture."""
    if model is not None and "token_type_ids" not in inspect.signature(model.forward).parameters:
        for row in rows:
            row.pop("token_type_ids", None)
    return rows


def examples_from_split(data: Any, tokenizer: Any, split: str, batch_size: int = 64,
                        model: nn.Module | None = None) -> list[Example]:
    """The split's examples as the data bundle tokenizes them (in order, padding removed), so the
    loop can shuffle, shard and resume on its own and the teacher cache can key them by position."""
    rows: list[Example] = []
    for batch in data.batches(tokenizer, split=split, batch_size=batch_size, shuffle=False):
        rows.extend(_unpad_rows(batch, len(rows)))
    return drop_unused_inputs(rows, model)


def examples_from_texts(texts: Iterable[str], tokenizer: Any, max_length: int, token_level: bool,
                        model: nn.Module | None = None) -> list[Example]:
    """Unlabeled text as examples: classification rows get label -100 (soft labels only); causal-LM
    rows predict their own next tokens."""
    rows: list[Example] = []
    for text in texts:
        enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
        row: Example = {key: value[0] for key, value in enc.items() if key in MODEL_INPUTS}
        row["labels"] = row["input_ids"].clone() if token_level else IGNORE_INDEX
        rows.append(row)
    return drop_unused_inputs(rows, model)


def reindex(rows: list[Example]) -> list[Example]:
    """Number examples 0..n-1 (their key in the teacher cache)."""
    for i, row in enumerate(rows):
        row["index"] = i
    return rows


def collate(rows: list[Example], pad_token_id: int = 0) -> Batch:
    """Right-pad a list of examples into a batch (labels padded with -100)."""
    longest = max(len(r["input_ids"]) for r in rows)
    batch: Batch = {}
    for key, pad in (("input_ids", pad_token_id), ("attention_mask", 0), ("token_type_ids", 0)):
        if key in rows[0]:
            batch[key] = torch.stack([F.pad(r[key], (0, longest - len(r[key])), value=pad) for r in rows])
    if "labels" in rows[0]:
        first = rows[0]["labels"]
        if isinstance(first, torch.Tensor):
            batch["labels"] = torch.stack([F.pad(r["labels"], (0, longest - len(r["labels"])), value=IGNORE_INDEX) for r in rows])
        else:
            batch["labels"] = torch.tensor([int(r["labels"]) for r in rows], dtype=torch.long)
    batch["index"] = torch.tensor([int(r.get("index", -1)) for r in rows], dtype=torch.long)
    return batch


def step_batches(num_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's batches of example positions: a permutation seeded by (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(num_examples, generator=generator).tolist()
    return [order[i : i + batch_size] for i in range(0, num_examples, batch_size)]


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: Batch) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}


# ------------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate(model: nn.Module, rows: list[Example], batch_size: int = 32, pad_token_id: int = 0) -> dict[str, float]:
    """``eval_accuracy`` for classifiers; ``eval_loss`` and ``eval_perplexity`` for causal LMs."""
    if not rows:
        return {}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    nll_sum = 0.0
    token_level = is_token_level(model)
    for start in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collate(rows[start : start + batch_size], pad_token_id).items()}
        logits = model(**model_inputs(batch)).logits
        if token_level:
            labels = batch["labels"][:, 1:]
            nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
            nll_sum += float(nll)
            total += int((labels != IGNORE_INDEX).sum())
        else:
            labelled = batch["labels"] != IGNORE_INDEX
            correct += int((logits.argmax(-1)[labelled] == batch["labels"][labelled]).sum())
            total += int(labelled.sum())
    model.train(was_training)
    if token_level:
        loss = nll_sum / max(total, 1)
        return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}
    return {"eval_accuracy": correct / max(total, 1)}


def higher_is_better(metric: str) -> bool:
    return "accuracy" in metric or "agreement" in metric


# ---------------------------------------------------------------------------------- the train loop


class Trainable(nn.Module):
    """The student plus any extra trainable modules of the losses (e.g. hidden-state projections),
    held together so one optimizer, one DDP wrapper and one checkpoint cover them all."""

    def __init__(self, student: nn.Module, aux: nn.Module | None = None):
        super().__init__()
        self.student = student
        self.aux = aux if aux is not None else nn.ModuleDict()

    def forward(self, loss_fn: LossFn, batch: Batch, fraction: float):
        """Run the loss inside ``forward`` so a DDP wrapper sees (and syncs) every parameter used."""
        return loss_fn(self, batch, fraction)


@dataclass
class TrainConfig:
    """How long and how to train, and the run's checkpoint, evaluation and stopping rules."""

    epochs: float = 1
    max_steps: int | None = None
    lr: float = 5e-5
    batch_size: int = 16
    weight_decay: float = 0.01
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 0
    eval_every: int | None = None
    early_stopping_patience: int | None = None
    select_best: bool = True
    metric: str | None = None


@dataclass
class TrainResult:
    metrics: dict[str, float]
    steps: int
    best_step: int | None = None
    stopped_early: bool = False
    resumed_from: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def total_steps(num_examples: int, cfg: TrainConfig) -> int:
    per_epoch = max(1, math.ceil(num_examples / cfg.batch_size))
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * per_epoch))  # fractional epochs allowed (e.g. 0.5)


def _lr_at(step: int, steps: int, cfg: TrainConfig) -> float:
    """Linear warmup then linear decay to zero; a pure function of the step so resume needs no state."""
    warmup = int(cfg.warmup_ratio * steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    return cfg.lr * max(0.0, (steps - step) / max(1, steps - warmup))


def _make_accelerator():
    """One CPU process by default; under ``accelerate launch`` the launcher's devices and processes.

    Unused parameters are allowed under DDP (e.g. a pooler that a loss does not reach)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    process_state()  # the shared state must know about CPU process groups before Accelerator reads it
    return Accelerator(cpu=not torch.cuda.is_available(),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def train(
    student: nn.Module,
    train_rows: list[Example],
    loss_fn: LossFn,
    cfg: TrainConfig,
    eval_rows: list[Example] | None = None,
    aux: nn.Module | None = None,
    progress: Callable[..., Any] | None = None,
    log: Callable[[str], None] | None = None,
    pad_token_id: int = 0,
    evaluate_fn: Callable[[nn.Module], dict[str, float]] | None = None,
) -> TrainResult:
    """Train ``student`` (and ``aux``) on ``train_rows`` minimising ``loss_fn(model, batch, fraction)``.

    Evaluates every ``eval_every`` steps (default: each epoch) on ``eval_rows``, keeps the best
    weights, stops after ``early_stopping_patience`` evaluations without improvement, and writes a
    checkpoint every ``checkpoint_every`` steps under ``checkpoint_dir``; if that folder already holds
    a checkpoint, training continues from it and ends exactly where an uninterrupted run would.
    """
    if not train_rows:
        raise ValueError("no training examples")
    torch.manual_seed(cfg.seed)
    accelerator = _make_accelerator()
    model, optimizer = accelerator.prepare(*_model_and_optimizer(student, aux, cfg))
    inner: Trainable = accelerator.unwrap_model(model)
    steps = total_steps(len(train_rows), cfg)
    per_epoch = max(1, math.ceil(len(train_rows) / cfg.batch_size))
    eval_every = cfg.eval_every or per_epoch
    metric = cfg.metric
    evaluate_fn = evaluate_fn or (lambda m: evaluate(m, eval_rows or [], cfg.batch_size, pad_token_id))
    loop, resumed_from = resume(accelerator, cfg.checkpoint_dir, log)

    keeper = BestWeights(cfg.checkpoint_dir)
    bar = progress(steps, "train") if progress else None
    if bar is not None and loop["step"]:
        bar.update(loop["step"])
    epoch_cache: dict[int, list[list[int]]] = {}
    model.train()
    while loop["step"] < steps and not loop["stopped_early"]:
        step = loop["step"]
        epoch, position = divmod(step, per_epoch)
        if epoch not in epoch_cache:
            epoch_cache = {epoch: step_batches(len(train_rows), cfg.batch_size, cfg.seed, epoch)}
        indices = epoch_cache[epoch][position]
        shard = indices[accelerator.process_index :: accelerator.num_processes] or indices
        batch = {k: v.to(accelerator.device) for k, v in collate([train_rows[i] for i in shard], pad_token_id).items()}
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, cfg)
        loss, parts = model(loss_fn, batch, step / max(1, steps - 1))
        accelerator.backward(loss)
        if cfg.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loop["step"] = step + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", refresh=False)  # refreshing every step floods CI logs

        done = loop["step"] >= steps
        if eval_rows is not None and (loop["step"] % eval_every == 0 or done):
            metrics = evaluate_fn(inner.student)
            if metrics:
                metric = metric or next(iter(metrics))
                _record_eval(loop, metrics, metric, parts, inner, cfg, accelerator, keeper)
        if cfg.checkpoint_dir is not None and cfg.checkpoint_every and loop["step"] % cfg.checkpoint_every == 0:
            save_checkpoint(accelerator, cfg.checkpoint_dir, loop)
    if bar is not None:
        bar.close()

    final_step = loop["step"]
    # Rank 0 may still be writing the best weights of the last evaluation: no rank leaves (and so
    # none clears the checkpoint folder) before every rank is here.
    accelerator.wait_for_everyone()
    if cfg.select_best and loop["best_step"] is not None and loop["best_step"] != loop["step"]:
        keeper.restore(inner)
        final_step = loop["best_step"]
    accelerator.wait_for_everyone()  # every rank has read the best weights before rank 0 clears them
    metrics = {**_metrics_at(loop["history"], final_step), "train_processes": accelerator.num_processes}
    return TrainResult(metrics, loop["step"], loop["best_step"],
                       loop["stopped_early"], resumed_from, loop["history"])


def _model_and_optimizer(student: nn.Module, aux: nn.Module | None, cfg: TrainConfig):
    """The trainable modules and AdamW (no weight decay on biases and norms)."""
    model = Trainable(student, aux)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return model, torch.optim.AdamW(groups, lr=cfg.lr)


def _metrics_at(history: list[dict[str, float]], step: int) -> dict[str, float]:
    """The evaluation recorded at ``step`` (eval metrics only), or {} when there was none."""
    for entry in reversed(history):
        if entry["step"] == step:
            return {k: v for k, v in entry.items() if k != "step" and not k.startswith("train_")}
    return {}


def _record_eval(loop, metrics, metric, parts, inner, cfg, accelerator, keeper: BestWeights) -> None:
    """Log an evaluation, keep the best weights, count evaluations without improvement."""
    value = metrics[metric]
    loop["history"].append({"step": loop["step"], **metrics, **{f"train_{k}": v for k, v in parts.items()}})
    best = loop["best_metric"]
    improved = best is None or (value > best if higher_is_better(metric) else value < best)
    if improved:
        loop.update(best_metric=value, best_step=loop["step"], bad_evals=0)
        if cfg.select_best:
            keeper.keep(inner, accelerator.is_main_process)
    else:
        loop["bad_evals"] += 1
        if cfg.early_stopping_patience is not None and loop["bad_evals"] >= cfg.early_stopping_patience:
            loop["stopped_early"] = True


# ------------------------------------------------------------------- helpers other stages reuse


def _ce_loss(model: Trainable, batch: Batch, fraction: float):
    out = model.student(**model_inputs(batch), labels=batch["labels"])
    return out.loss, {"ce": float(out.loss.detach())}


def finetune_classifier(model, data, tokenizer, *, epochs, lr, batch_size, seed, progress=None) -> dict:
    """Fine-tune ``model`` (a sequence classifier) on ``data.train`` with cross-entropy in place and
    return ``{"eval_accuracy": ...}`` on ``data.eval``. ``progress`` is ``ctx.progress`` or None."""
    train_rows = examples_from_split(data, tokenizer, "train", model=model)
    eval_rows = examples_from_split(data, tokenizer, "eval", model=model)
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, select_best=False, eval_every=10**9)
    result = train(model, train_rows, _ce_loss, cfg, eval_rows=eval_rows, progress=progress,
                   pad_token_id=tokenizer.pad_token_id or 0)
    model.eval()
    return result.metrics


def live_kd_loss(teacher: nn.Module, temperature: float) -> LossFn:
    """Soft-label KD against a teacher run on each batch: KL at ``temperature`` for classifiers,
    per-token forward KL for causal LMs."""
    token_level = is_token_level(teacher)

    def loss_fn(model: Trainable, batch: Batch, fraction: float):
        inputs = model_inputs(batch)
        with torch.no_grad():
            teacher_logits = teacher(**inputs).logits
        student_logits = model.student(**inputs).logits
        if token_level:
            loss = token_divergence(student_logits, teacher_logits, batch["attention_mask"], "forward_kl", temperature)
        else:
            loss = soft_kl(student_logits, teacher_logits, temperature)
        return loss, {"kd": float(loss.detach())}

    return loss_fn


def kd_recover(student, teacher, data, tokenizer, *, steps, lr, batch_size, temperature, seed, progress=None) -> dict:
    """A short logit-KD run that lets a pruned/factorized/trimmed ``student`` recover its teacher's
    behaviour: ``steps`` updates on ``data.train`` (labels unused). Returns the student's eval metrics
    (``eval_accuracy``, or ``eval_loss``/``eval_perplexity`` for causal LMs) and the last ``kd_loss``."""
    teacher.eval()
    train_rows = examples_from_split(data, tokenizer, "train", model=student)
    eval_rows = examples_from_split(data, tokenizer, "eval", model=student)
    cfg = TrainConfig(max_steps=steps, lr=lr, batch_size=batch_size, seed=seed, select_best=False,
                      eval_every=10**9, warmup_ratio=0.0)
    last: dict[str, float] = {}
    base_fn = live_kd_loss(teacher, temperature)

    def loss_fn(model, batch, fraction):
        loss, parts = base_fn(model, batch, fraction)
        last["kd_loss"] = parts["kd"]
        return loss, parts

    result = train(student, train_rows, loss_fn, cfg, eval_rows=eval_rows, progress=progress,
                   pad_token_id=tokenizer.pad_token_id or 0)
    student.eval()
    return {**result.metrics, **last}
