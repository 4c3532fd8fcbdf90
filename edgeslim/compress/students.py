"""Build a student model from a teacher: by layer selection, by a narrower config, or from a source.

- Layer selection keeps some of the teacher's transformer blocks (every k-th, or a list) and copies
  them with the embeddings, pooler and task head: the DistilBERT initialisation, which starts the
  student close to the teacher so distillation converges quickly.
- A narrower config (hidden size, heads, FFN width) builds a fresh model of the same architecture and
  copies the leading slice of every teacher tensor whose name matches, so it still starts from the
  teacher's weights where the shapes allow.
- Any Hugging Face model folder can be the student as-is (it must share the teacher's vocabulary).

Works on any model whose blocks sit in one ``nn.ModuleList`` of length ``num_hidden_layers``: BERT,
DistilBERT, RoBERTa, MiniLM encoders, Llama-family and GPT-2 decoders.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from edgeslim.compress.student_shape import resolve_layers


def find_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The dotted name and the ``nn.ModuleList`` holding the model's transformer blocks."""
    count = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count and count > 0:
            return name, module
    raise ValueError(f"no list of {count} transformer blocks found in {type(model).__name__}")


def _set_parent_attr(model: nn.Module, dotted: str, value: nn.Module) -> None:
    parent_name, _, attr = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, value)


def _renumber_layer_indices(blocks: nn.ModuleList) -> None:
    """Give each kept block its new position (decoders index their KV cache by ``layer_idx``)."""
    for new_index, block in enumerate(blocks):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index


def select_layers(teacher: nn.Module, keep: list[int]) -> nn.Module:
    """A copy of ``teacher`` with only the blocks in ``keep``; every other weight is copied as is."""
    student = copy.deepcopy(teacher)
    name, blocks = find_layer_list(student)
    kept = nn.ModuleList([blocks[i] for i in keep])
    _renumber_layer_indices(kept)
    _set_parent_attr(student, name, kept)
    config = student.config
    config.num_hidden_layers = len(keep)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in keep]
    return student


def narrow_config(config: Any, **width: int | None) -> Any:
    """A copy of ``config`` with the given widths (None keeps the teacher's); GPT-2's ``n_inner``
    and the head dimension follow ``intermediate_size`` and ``hidden_size``."""
    new = copy.deepcopy(config)
    for key, value in width.items():
        if value is None:
            continue
        if key == "intermediate_size" and not hasattr(new, "intermediate_size") and hasattr(new, "n_inner"):
            new.n_inner = value  # GPT-2 names the FFN width n_inner
        elif key == "intermediate_size" and hasattr(new, "hidden_dim") and not hasattr(new, "intermediate_size"):
            new.hidden_dim = value  # DistilBERT names it hidden_dim
        else:
            setattr(new, key, value)
    if getattr(new, "head_dim", None) is not None and width.get("hidden_size"):
        new.head_dim = new.hidden_size // new.num_attention_heads
    heads = new.num_attention_heads
    if new.hidden_size % heads:
        raise ValueError(f"hidden_size {new.hidden_size} is not divisible by num_attention_heads {heads}")
    kv = getattr(new, "num_key_value_heads", None)
    if kv is not None and heads % kv:
        raise ValueError(f"num_attention_heads {heads} is not divisible by num_key_value_heads {kv}")
    return new


def copy_leading_slices(source: nn.Module, target: nn.Module) -> int:
    """Copy ``source[name][:n0, :n1, ...]`` into every same-named, same-rank tensor of ``target``.

    Returns how many tensors were initialised from the source.
    """
    source_state = source.state_dict()
    copied = 0
    with torch.no_grad():
        for name, tensor in target.state_dict().items():
            src = source_state.get(name)
            if src is None or src.dim() != tensor.dim() or any(s < t for s, t in zip(src.shape, tensor.shape)):
                continue
            tensor.copy_(src[tuple(slice(0, n) for n in tensor.shape)])
            copied += 1
    return copied


def narrow_student(teacher: nn.Module, keep: list[int] | None = None, **width: int | None) -> nn.Module:
    """A student with fewer blocks (``keep``) and/or narrower widths, initialised from the teacher's
    weights by leading slices."""
    base = select_layers(teacher, keep) if keep is not None else teacher
    if not any(v is not None for v in width.values()):
        return base if keep is not None else copy.deepcopy(teacher)
    config = narrow_config(base.config, **width)
    torch.manual_seed(0)
    student = type(teacher)(config)
    copy_leading_slices(base, student)
    return student


def load_source_student(path: str, teacher: nn.Module, auto_class: Any) -> nn.Module:
    """Any HF model folder as the student; it must share the teacher's vocabulary (logits are compared
    token for token) and a classifier gets the teacher's number of labels."""
    kwargs = {}
    if type(teacher).__name__.endswith("ForSequenceClassification"):
        kwargs = {"num_labels": teacher.config.num_labels, "id2label": teacher.config.id2label,
                  "label2id": teacher.config.label2id}
    student = auto_class.from_pretrained(path, attn_implementation=teacher.config._attn_implementation, **kwargs)
    if student.config.vocab_size != teacher.config.vocab_size:
        raise ValueError(
            f"student vocabulary ({student.config.vocab_size}) differs from the teacher's "
            f"({teacher.config.vocab_size}); pick a student with the teacher's tokenizer"
        )
    return student


def build_student(
    teacher: nn.Module,
    layers: Any = None,
    source: str | None = None,
    auto_class: Any = None,
    **width: int | None,
) -> nn.Module:
    """The student a recipe asks for: ``source`` if given, else the teacher's ``layers`` (see
    :func:`resolve_layers`) at the given widths."""
    if source is not None:
        return load_source_student(source, teacher, auto_class)
    keep = resolve_layers(layers, teacher.config.num_hidden_layers)
    return narrow_student(teacher, keep, **width)
