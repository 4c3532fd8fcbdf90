"""The ``teacher`` stage: load the teacher (local, ``pkg://``, hub id, GGUF, or built from a config)
and, when it has no head for the task, fine-tune one on the labeled data.

The result is an ordinary HF ``save_pretrained`` folder (safetensors + tokenizer), cached like every
stage, so the fine-tune runs once. For classification the label names from the data are written into
``config.id2label`` so every later artifact (and the bundle) carries them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeslim.artifacts import Artifact
from edgeslim.errors import EdgeslimError
from edgeslim.pipeline import StageConfig, StageContext
from edgeslim.sources import resolve_model_source


class TeacherStageConfig(StageConfig):
    """The teacher stage takes its settings from the recipe's ``teacher`` section."""


def load_teacher_config(teacher, base_dir: Path | None):
    """The teacher's ``PretrainedConfig`` without loading weights (for ``edgeslim check``)."""
    from transformers import AutoConfig

    if teacher.build is not None:
        return _config_from_dict(teacher.build)
    source = resolve_model_source(teacher.source, base_dir)
    if teacher.gguf_file or source.endswith(".gguf"):
        return None  # reading a GGUF header needs the gguf loader; checked when the stage runs
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=teacher.trust_remote_code)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise EdgeslimError(f"teacher.source '{teacher.source}' is not a loadable model: {first}") from None


def _config_from_dict(build: dict[str, Any]):
    from transformers import AutoConfig

    fields = dict(build)
    model_type = fields.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **fields)
    except ValueError as exc:
        raise EdgeslimError(f"teacher.build: {str(exc).splitlines()[0]}") from None


def run_teacher(ctx: StageContext) -> Artifact:
    """Build or load the teacher, fine-tune it when needed, and save it into ``ctx.out_dir``."""
    import torch

    recipe = ctx.recipe
    teacher = recipe.teacher
    torch.manual_seed(recipe.seed)
    tokenizer = _load_tokenizer(teacher, recipe, ctx)
    model, needs_finetune = _load_model(teacher, recipe, ctx, tokenizer)
    metrics: dict[str, Any] = {}
    if recipe.task == "text-classification":
        if needs_finetune or teacher.finetune is not None:
            from edgeslim.compress.trainer import finetune_classifier

            settings = teacher.finetune if teacher.finetune is not None else _default_finetune()
            ctx.log(f"fine-tuning the teacher on {len(ctx.data.train)} examples ({settings.epochs:g} epochs)")
            metrics.update(finetune_classifier(
                model, ctx.data, tokenizer, epochs=settings.epochs, lr=settings.lr,
                batch_size=settings.batch_size, seed=recipe.seed,
                progress=ctx.progress,
            ))
    model.save_pretrained(ctx.out_dir, safe_serialization=True)
    tokenizer.save_pretrained(ctx.out_dir)
    return Artifact(ctx.out_dir, "torch", {"metrics": metrics, "params": count_params(model)})


def _default_finetune():
    from edgeslim.recipe import FinetuneConfig

    return FinetuneConfig()


def count_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _load_tokenizer(teacher, recipe, ctx: StageContext):
    from transformers import AutoTokenizer

    if teacher.train_tokenizer is not None:
        return train_wordpiece(
            [ex.text for ex in ctx.data.train] + ctx.data.unlabeled, teacher.train_tokenizer.vocab_size, ctx.out_dir
        )
    source = teacher.tokenizer or teacher.source
    location = resolve_model_source(source, recipe.base_dir)
    if location.endswith(".gguf"):
        location, gguf = str(Path(location).parent), Path(location).name
        return AutoTokenizer.from_pretrained(location, gguf_file=gguf)
    if teacher.gguf_file:
        return AutoTokenizer.from_pretrained(location, gguf_file=teacher.gguf_file)
    try:
        return AutoTokenizer.from_pretrained(location, trust_remote_code=teacher.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise EdgeslimError(f"teacher tokenizer '{source}' could not be loaded: {str(exc).splitlines()[0]}") from None


def train_wordpiece(texts: list[str], vocab_size: int, workdir: Path):
    """A lower-cased BERT WordPiece tokenizer trained on ``texts`` (for teachers built from a config)."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=1)
    scratch = Path(workdir) / "_tokenizer"
    scratch.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(scratch))
    tokenizer = BertTokenizerFast(vocab_file=str(scratch / "vocab.txt"), do_lower_case=True)
    tokenizer.model_max_length = 512
    import shutil

    shutil.rmtree(scratch)
    return tokenizer


def _load_model(teacher, recipe, ctx: StageContext, tokenizer):
    """Return (model, needs_finetune): a classifier without a trained head needs fine-tuning."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    classification = recipe.task == "text-classification"
    label_fields = {}
    if classification:
        labels = ctx.data.labels
        label_fields = dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                            label2id={name: i for i, name in enumerate(labels)})
    if teacher.build is not None:
        config = _config_from_dict({**teacher.build, "vocab_size": len(tokenizer), **label_fields})
        auto = AutoModelForSequenceClassification if classification else AutoModelForCausalLM
        return auto.from_config(config), classification
    source = resolve_model_source(teacher.source, recipe.base_dir)
    if source.endswith(".gguf") or teacher.gguf_file:
        return load_gguf_causal_lm(source, teacher.gguf_file), False
    config = load_teacher_config(teacher, recipe.base_dir)
    if not classification:
        return AutoModelForCausalLM.from_pretrained(source, trust_remote_code=teacher.trust_remote_code), False
    has_head = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
    same_labels = has_head and config.num_labels == len(ctx.data.labels)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, trust_remote_code=teacher.trust_remote_code, ignore_mismatched_sizes=not same_labels,
        **label_fields,
    )
    return model, not same_labels


def load_gguf_causal_lm(source: str, gguf_file: str | None):
    """Load a GGUF causal LM into a plain HF model (``save_pretrained`` refuses GGUF-loaded models,
    so the dequantized weights are copied into a freshly built model of the same config)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(source)
    folder, name = (str(path.parent), path.name) if source.endswith(".gguf") else (source, gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(loaded.state_dict())
    return fresh
