"""The torch artifact folders the compress stages hand each other, and the KD recovery they share.

One place for: loading a folder as the task's model class, saving model + tokenizer (+ the vocabulary
map, when the vocabulary was trimmed upstream), counting parameters, and the short logit-KD recovery
``prune``, ``lowrank`` and ``vocab`` can run against the teacher.

A trimmed vocabulary changes what the teacher must be fed: the student's tokenizer gives new ids,
the teacher knows only the old ones. ``vocab_map.json`` (``kept_ids[new] = old``) travels with every
later torch artifact, and recovery runs the teacher through :class:`TrimmedVocabTeacher`, which maps
the ids back and, for causal LMs, keeps the teacher's logits of the kept tokens only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeslim.artifacts import atomic_write_json
from edgeslim.compress.recovery_config import Recovery

VOCAB_MAP_FILE = "vocab_map.json"


def auto_class(task: str):
    """The transformers Auto class that loads a model folder for ``task``."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification


def load_torch(path: Path, task: str, **kwargs):
    """Model (eval mode) and tokenizer of a torch artifact folder."""
    from transformers import AutoTokenizer

    model = auto_class(task).from_pretrained(path, **kwargs)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)


def check_reloads(model: nn.Module, folder: Path, task: str, stage: str) -> None:
    """``folder`` (just saved from ``model``) must load with ``from_pretrained`` into the same model:
    the same outputs on a probe input. A cut the config cannot describe (a width that makes
    transformers build other modules, a head count it reads differently) fails here, in one line,
    instead of as a silently different model in every later stage."""
    from edgeslim.errors import EdgeslimError

    reloaded = auto_class(task).from_pretrained(folder).eval()
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.arange(1, 9, dtype=torch.long).remainder(vocab).unsqueeze(0)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        want, got = model(input_ids=ids).logits, reloaded(input_ids=ids).logits
    model.train(was_training)
    if want.shape != got.shape or (want - got).abs().max() > 1e-4 * (want.abs().max() + 1e-6):
        raise EdgeslimError(f"{stage}: the saved model does not reload as itself with from_pretrained (outputs differ); "
                            f"its config cannot describe this cut of a {model.config.model_type} model: change the "
                            f"{stage} ratios")


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def read_vocab_map(folder: Path) -> list[int] | None:
    """``kept_ids`` (new id -> teacher id) of a model whose vocabulary was trimmed, else ``None``."""
    path = Path(folder) / VOCAB_MAP_FILE
    return json.loads(path.read_text())["kept_ids"] if path.is_file() else None


def save_torch(model: nn.Module, tokenizer, out_dir: Path, kept_ids: list[int] | None = None) -> None:
    """Save a torch artifact; ``kept_ids`` (from :func:`read_vocab_map` of the input) is carried on."""
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if kept_ids is not None:
        atomic_write_json(Path(out_dir) / VOCAB_MAP_FILE, {"kept_ids": list(kept_ids)})


class TrimmedVocabTeacher(nn.Module):
    """The teacher as a trimmed-vocabulary student sees it: new ids in, the teacher's outputs on the
    old ids out (causal LMs: logits of the kept tokens only, in new-id order)."""

    def __init__(self, teacher: nn.Module, kept_ids: list[int]):
        super().__init__()
        self.teacher = teacher
        self.config = teacher.config
        self.register_buffer("kept", torch.tensor(kept_ids, dtype=torch.long), persistent=False)

    def forward(self, input_ids: torch.Tensor, **kwargs):
        from edgeslim.compress.trainer import is_token_level

        out = self.teacher(input_ids=self.kept[input_ids], **kwargs)
        if is_token_level(self.teacher):
            out.logits = out.logits[..., self.kept]
        return out


def teacher_for(teacher: nn.Module, kept_ids: list[int] | None) -> nn.Module:
    return teacher if kept_ids is None else TrimmedVocabTeacher(teacher, kept_ids).eval()


def recover(student: nn.Module, recovery: Recovery, ctx, tokenizer, kept_ids: list[int] | None = None) -> dict[str, Any]:
    """Short KD recovery against the teacher (or, with ``steps: 0``, just the eval metrics).

    ``kept_ids`` is the student's vocabulary map when its vocabulary was trimmed: the teacher is then
    fed the old ids of the student's tokens.
    """
    from edgeslim.compress.trainer import evaluate, examples_from_split, kd_recover

    if recovery.steps and ctx.teacher is not None:
        teacher, _ = load_torch(ctx.teacher.path, ctx.task)
        metrics = kd_recover(student, teacher_for(teacher, kept_ids), ctx.data, tokenizer, steps=recovery.steps,
                             lr=recovery.lr, batch_size=recovery.batch_size, temperature=recovery.temperature,
                             seed=ctx.seed, progress=ctx.progress)
        student.eval()
        return {**metrics, "recovery_steps": recovery.steps}
    rows = examples_from_split(ctx.data, tokenizer, "eval", model=student)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return evaluate(student, rows, pad_token_id=pad)
