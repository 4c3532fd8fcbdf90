"""The ``teacher`` stage: load the teacher (local, ``pkg://``, hub id, GGUF, or built from a config)
and, when it has no head for the task, fine-tune one on the labeled data.

The result is an ordinary HF ``save_pretrained`` folder (safetensors + tokenizer), cached like every
stage, so the fine-tune runs once. For classification the label names from the data are written into
``config.id2label`` so every later artifact (and the bundle) carries them. A GGUF teacher (llama.cpp
file) is dequantized into an fp32 HF checkpoint with the tokenizer rebuilt from the GGUF header, so
every later stage works on plain safetensors; see docs/llm.md.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from edgeslim.artifacts import Artifact
from edgeslim.errors import EdgeslimError, first_line
from edgeslim.stage import StageConfig, StageContext, register_stage
from edgeslim.sources import resolve_model_source


class FinetuneConfig(StageConfig):
    """Fine-tune the teacher on the labeled data (when it has no head for the task, or is built)."""

    epochs: float = Field(1.0, gt=0, le=1000, description="passes over the training split (at most 1000)")
    lr: float = Field(5e-5, gt=0)
    batch_size: int = Field(16, ge=1)
    max_steps: int | None = Field(None, ge=1)


class TokenizerTrainConfig(StageConfig):
    """Train a WordPiece tokenizer on the training texts (for teachers built from a bare config)."""

    vocab_size: int = Field(1000, ge=32)


class TeacherConfig(StageConfig):
    """Where the teacher comes from: exactly one of ``source`` (path, ``pkg://``, hub id) or ``build``."""

    source: str | None = None
    gguf_file: str | None = None
    build: dict[str, Any] | None = None
    tokenizer: str | None = None
    train_tokenizer: TokenizerTrainConfig | None = None
    finetune: FinetuneConfig | None = None
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> "TeacherConfig":
        if (self.source is None) == (self.build is None):
            raise ValueError("give exactly one of 'source' (a model path or id) or 'build' (a config)")
        if self.build is not None and "model_type" not in self.build:
            raise ValueError("'build' needs a 'model_type' (e.g. bert, llama)")
        if self.build is not None and self.tokenizer is None and self.train_tokenizer is None:
            raise ValueError("a built teacher needs 'tokenizer' (a path) or 'train_tokenizer'")
        return self


def load_teacher_config(teacher, base_dir: Path | None):
    """The teacher's ``PretrainedConfig`` without loading weights (for ``edgeslim check``)."""
    from transformers import AutoConfig

    if teacher.build is not None:
        return _config_from_dict(teacher.build)
    source = resolve_model_source(teacher.source, base_dir)
    if is_gguf(teacher):
        return load_gguf_config(*gguf_location(source, teacher.gguf_file))
    if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
        raise EdgeslimError(f"teacher.source '{teacher.source}' is a folder without config.json; give a model "
                            "folder written by save_pretrained (config.json plus weights)")
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=teacher.trust_remote_code)
    except (OSError, ValueError, AttributeError) as exc:
        raise EdgeslimError(hub_hint(teacher.source, source) or
                            f"teacher.source '{teacher.source}' is not a loadable model: {first_line(exc)}") from None


def teacher_shape(teacher, base_dir: Path | None):
    """The teacher's config for ``edgeslim check``: read from config.json without transformers where
    :mod:`edgeslim.model_shape` knows the model type (seconds faster), from a cache for a GGUF file
    read before, else :func:`load_teacher_config`."""
    from edgeslim.model_shape import ModelShape, fast_shape

    if teacher.build is None:
        source = resolve_model_source(teacher.source, base_dir)
        if is_gguf(teacher):
            return ModelShape.from_dict(gguf_config_fields(*gguf_location(source, teacher.gguf_file)))
        if Path(source).is_dir() and (Path(source) / "config.json").is_file():
            shape = fast_shape(Path(source))
            if shape is not None:
                return shape
    return load_teacher_config(teacher, base_dir)


def hub_hint(value: str, resolved: str) -> str | None:
    """The message for a hub id that could not be fetched: offline (the default) or hub unreachable."""
    import os

    if Path(resolved).exists():
        return None
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return (f"teacher.source '{value}' is a hub id, and edgeslim works offline; pass --allow-network to "
                "download it, or give a local model folder")
    return (f"teacher.source '{value}': the hub could not be reached or has no such model "
            f"({os.environ.get('HF_ENDPOINT', 'https://huggingface.co')}); check the id and the network, "
            "or give a local model folder")


#: Sizes a built teacher's config must give as positive whole numbers, when it gives them.
BUILD_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
               "max_position_embeddings", "vocab_size", "n_embd", "n_layer", "n_head")


def _config_from_dict(build: dict[str, Any]):
    from transformers import AutoConfig

    fields = dict(build)
    model_type = fields.pop("model_type")
    for key in BUILD_SIZES:
        value = fields.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise EdgeslimError(f"teacher.build.{key} must be a positive whole number, not {value!r}")
    try:
        config = AutoConfig.for_model(model_type, **fields)
    except ValueError as exc:
        raise EdgeslimError(f"teacher.build: {first_line(exc)}") from None
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if isinstance(hidden, int) and isinstance(heads, int) and heads and hidden % heads:
        raise EdgeslimError(f"teacher.build: hidden_size {hidden} is not a multiple of num_attention_heads {heads}; "
                            "change one so each head gets a whole number of dimensions")
    return config


def run_teacher(config: TeacherConfig, artifact: None, ctx: StageContext) -> Artifact:
    """Build or load the teacher (``config`` is the recipe's ``teacher`` section; there is no input
    artifact), fine-tune it when needed, and save it into ``ctx.out_dir``."""
    import torch

    from edgeslim.compress.torch_artifacts import count_params

    recipe = ctx.recipe
    teacher = config
    if recipe.task == "text-classification" and is_gguf(teacher):
        raise EdgeslimError("a GGUF teacher is a causal LM; set task: causal-lm (or give an HF classifier as teacher.source)")
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
    return FinetuneConfig()


def _load_tokenizer(teacher, recipe, ctx: StageContext):
    from transformers import AutoTokenizer

    if teacher.train_tokenizer is not None:
        return train_wordpiece(
            [ex.text for ex in ctx.data.train] + ctx.data.unlabeled, teacher.train_tokenizer.vocab_size, ctx.out_dir
        )
    source = teacher.tokenizer or teacher.source
    location = resolve_model_source(source, recipe.base_dir)
    if location.endswith(".gguf") or (teacher.gguf_file and teacher.tokenizer is None):
        return load_gguf_tokenizer(*gguf_location(location, teacher.gguf_file))
    try:
        return AutoTokenizer.from_pretrained(location, trust_remote_code=teacher.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise EdgeslimError(f"teacher tokenizer '{source}' could not be loaded: {first_line(exc)}") from None


def train_wordpiece(texts: list[str], vocab_size: int, workdir: Path):
    """A lower-cased BERT WordPiece tokenizer for ``texts`` (teachers built from a config), built the
    same way every time: the special tokens, every character of the texts (alone and as a ``##``
    continuation), then the most frequent words (count, then spelling) up to ``vocab_size``.

    Not the ``tokenizers`` trainer: it lists its alphabet from a hash set and breaks ties between
    merges of equal count arbitrarily, so two trainings on the same text gave different vocabularies
    and every artifact of a run from scratch differed. Words outside the vocabulary are split into
    characters, which a model built from scratch learns as well as any subword.
    """
    from collections import Counter

    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer
    from transformers import BertTokenizerFast

    normalizer, splitter = BertNormalizer(lowercase=True), BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({char for word in counts for char in word})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + char for char in chars]
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1]
    vocab += words[: max(0, vocab_size - len(vocab))]
    scratch = Path(workdir) / "_tokenizer"
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
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
        fit_special_tokens(config, tokenizer, given=set(teacher.build))
        auto = AutoModelForSequenceClassification if classification else AutoModelForCausalLM
        return auto.from_config(config), classification
    source = resolve_model_source(teacher.source, recipe.base_dir)
    if is_gguf(teacher):
        return load_gguf_causal_lm(source, teacher.gguf_file), False
    config = load_teacher_config(teacher, recipe.base_dir)
    try:
        if not classification:
            return AutoModelForCausalLM.from_pretrained(source, trust_remote_code=teacher.trust_remote_code), False
        has_head = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
        same_labels = has_head and config.num_labels == len(ctx.data.labels)
        model = AutoModelForSequenceClassification.from_pretrained(
            source, trust_remote_code=teacher.trust_remote_code, ignore_mismatched_sizes=not same_labels,
            **label_fields,
        )
    except OSError as exc:  # no weights, or weights transformers refuses (a pickle .bin without safetensors)
        raise EdgeslimError(f"teacher.source '{teacher.source}': its weights cannot be loaded ({first_line(exc)}); "
                            "give safetensors weights (save_pretrained(..., safe_serialization=True))") from None
    return model, not same_labels


# Which of the tokenizer's special tokens stands for a config's ``<name>_token_id``, in order of preference.
SPECIAL_TOKENS = {"pad": ("pad", "unk"), "bos": ("bos", "cls"), "cls": ("cls", "bos"), "eos": ("eos", "sep"),
                  "sep": ("sep", "eos"), "unk": ("unk",), "mask": ("mask",)}


def fit_special_tokens(config, tokenizer, given: set[str]) -> None:
    """Point a built config's special token ids (its architecture's defaults, e.g. ModernBERT's pad id
    50283) at the tokenizer's own, so none lies outside the vocabulary the model is built with; ids the
    recipe's ``build`` gives are kept."""
    for attribute, choices in SPECIAL_TOKENS.items():
        key = f"{attribute}_token_id"
        value = getattr(config, key, None)
        if key in given or not isinstance(value, int) or 0 <= value < config.vocab_size:
            continue
        ids = [getattr(tokenizer, f"{choice}_token_id", None) for choice in choices]
        setattr(config, key, next((i for i in ids if i is not None), None))


# --------------------------------------------------------------------------------------------------
# GGUF teachers (llama.cpp files): dequantized into a plain HF checkpoint, tokenizer rebuilt faithfully

# llama.cpp pre-tokenizer types whose first regex splits every digit on its own (llama-vocab.cpp).
GGUF_DIGIT_SPLIT_PRE = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")


def is_gguf(teacher) -> bool:
    """Whether the recipe's teacher is a GGUF file (``source`` ends in .gguf, or ``gguf_file`` is set)."""
    return bool(teacher.gguf_file) or (teacher.source or "").endswith(".gguf")


def gguf_location(source: str, gguf_file: str | None) -> tuple[str, str]:
    """(folder, file name) of a GGUF teacher given as a ``.gguf`` path or a folder plus ``gguf_file``."""
    path = Path(source)
    folder, name = (str(path.parent), path.name) if source.endswith(".gguf") else (source, gguf_file or "")
    if not (Path(folder) / name).is_file():
        raise EdgeslimError(f"GGUF teacher file '{Path(folder) / name}' does not exist; fix teacher.source or teacher.gguf_file")
    return folder, name


@functools.lru_cache(maxsize=4)
def gguf_metadata(path: str | Path) -> dict[str, Any]:
    """The GGUF header's scalar and string fields (architecture, tokenizer flags, special ids)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise EdgeslimError("reading a GGUF teacher needs the 'gguf' package; pip install gguf") from None
    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError) as exc:
        raise EdgeslimError(f"'{Path(path).name}' is not a readable GGUF file: {first_line(exc)}") from None
    skip = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")
    fields = {}
    for key, field in reader.fields.items():
        if key not in skip:
            fields[key] = field.contents()
    return fields


def load_gguf_config(folder: str, name: str):
    """The ``PretrainedConfig`` transformers derives from a GGUF header (no weights are read)."""
    from transformers import AutoConfig

    _check_gguf_architecture(Path(folder) / name)
    return AutoConfig.from_pretrained(folder, gguf_file=name)


def gguf_config_fields(folder: str, name: str) -> dict[str, Any]:
    """The config transformers derives from a GGUF header, as a dict, cached per file (size and
    modification time): reading the header of a 100 MB GGUF takes seconds."""
    import hashlib
    import json
    import os

    from edgeslim.artifacts import atomic_write_json

    path = (Path(folder) / name).resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:24]
    cache_root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cached = cache_root / "edgeslim" / "gguf-configs" / f"{key}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    fields = load_gguf_config(folder, name).to_dict()
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cached, fields)
    except OSError:
        pass  # a read-only home only costs the next check its speed
    return fields


def _check_gguf_architecture(path: Path) -> None:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    arch = gguf_metadata(path).get("general.architecture")
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise EdgeslimError(f"GGUF architecture '{arch}' cannot be loaded by transformers; use a GGUF of "
                            f"{', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES)[:8])}, ... or an HF checkpoint")


def load_gguf_tokenizer(folder: str, name: str):
    """The GGUF file's tokenizer as llama.cpp runs it.

    transformers' GGUF converter gets a byte-level BPE (``tokenizer.ggml.model == "gpt2"``) partly
    wrong: it always prepends BOS (the header may say ``add_bos_token: false``), names BOS as EOS,
    leaves no padding token and drops the digit split of pre-tokenizers such as ``smollm``. Those
    are taken from the header here, so the cached teacher tokenizes exactly like the GGUF model.
    """
    from transformers import AutoTokenizer

    meta = gguf_metadata(Path(folder) / name)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if meta.get("tokenizer.ggml.model") == "gpt2":
        tokenizer = _byte_level_tokenizer(tokenizer, meta)
    template = meta.get("tokenizer.chat_template")
    if template and not tokenizer.chat_template:
        tokenizer.chat_template = template
    return tokenizer


def _byte_level_tokenizer(converted, meta: dict[str, Any]):
    """A ``PreTrainedTokenizerFast`` over the converted byte-level BPE with the header's settings."""
    from tokenizers import pre_tokenizers, processors, decoders
    from transformers import PreTrainedTokenizerFast

    backend = converted.backend_tokenizer
    level = pre_tokenizers.ByteLevel(add_prefix_space=bool(meta.get("tokenizer.ggml.add_space_prefix", False)),
                                     use_regex=True)
    if meta.get("tokenizer.ggml.pre") in GGUF_DIGIT_SPLIT_PRE:
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), level])
    else:
        backend.pre_tokenizer = level
    backend.decoder = decoders.ByteLevel()
    token = {role: _special(converted, meta, f"tokenizer.ggml.{role}_token_id")
             for role in ("bos", "eos", "unknown", "padding")}
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and token["bos"] is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and token["eos"] is not None
    if add_bos or add_eos:
        single = ([f"{token['bos']}:0"] if add_bos else []) + ["$A:0"] + ([f"{token['eos']}:0"] if add_eos else [])
        specials = [(t, converted.convert_tokens_to_ids(t)) for t in (token["bos"] if add_bos else None,
                                                                      token["eos"] if add_eos else None) if t]
        backend.post_processor = processors.TemplateProcessing(single=" ".join(single), special_tokens=specials)
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=token["bos"], eos_token=token["eos"], unk_token=token["unknown"],
        pad_token=token["padding"] or token["eos"], model_max_length=int(_context_length(meta)),
        clean_up_tokenization_spaces=False, model_input_names=["input_ids", "attention_mask"],
    )


def _special(converted, meta: dict[str, Any], key: str) -> str | None:
    token_id = meta.get(key)
    return None if token_id is None else converted.convert_ids_to_tokens(int(token_id))


def _context_length(meta: dict[str, Any]) -> int:
    arch = meta.get("general.architecture", "")
    return int(meta.get(f"{arch}.context_length") or 2048)


def load_gguf_causal_lm(source: str, gguf_file: str | None):
    """Load a GGUF causal LM into a plain fp32 HF model that ``save_pretrained`` accepts.

    transformers dequantizes the GGUF tensors on load (Q4_1 etc. -> float32) but marks the model as
    GGUF-loaded, and ``save_pretrained`` refuses such a model; so the weights are copied into a fresh
    model built from the same config. Tied input/output embeddings stay tied (the fresh model ties
    them from ``tie_word_embeddings``); the weights keep the GGUF's quantization grid.
    """
    import torch
    from transformers import AutoModelForCausalLM

    folder, name = gguf_location(source, gguf_file)
    config = load_gguf_config(folder, name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    meta = gguf_metadata(Path(folder) / name)
    for role, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
        token_id = meta.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None:
            setattr(fresh.generation_config, f"{role}_token_id", int(token_id))
            setattr(fresh.config, f"{role}_token_id", int(token_id))
    fresh.config.name_or_path = name
    return fresh.eval()


register_stage("teacher", config=TeacherConfig, function="edgeslim.teacher:run_teacher", consumes="source",
               produces="torch", trains=True)
