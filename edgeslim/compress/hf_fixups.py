"""Where the prunable parts of a Hugging Face transformer are, and how to cut them so it still reloads.

torch-pruning removes rows and columns of ``nn.Linear`` weights but leaves the HF bookkeeping stale
(``num_attention_heads``, ``attention_head_size``, ``all_head_size``, ``intermediate_size``, ...), and a
model whose config disagrees with its weights fails to reload. This module knows two families:

* BERT family (BERT, RoBERTa, ELECTRA, ...: ``encoder.layer[i].attention.self.query``): pruned heads
  are recorded in ``config.pruned_heads`` (original head numbers), which HF itself replays on
  ``from_pretrained``, so every layer may keep a different number of heads.
* Llama family (Llama, Mistral, Qwen2, Qwen3, Gemma2: ``layers[i].self_attn.q_proj`` + ``mlp.gate_proj``): the unit
  of head pruning is a key/value group (one K/V head and the query heads that share it), so grouped-
  query attention stays grouped; the config holds one head count for all layers.

A standard config holds one FFN width (and, for Llama, one head count) for all layers. Where layers
end up different, the narrower ones are padded with exact zeros (zero rows in, zero columns out) up to
the widest: the model reloads with ``AutoModel...from_pretrained`` and identical outputs, but the padded
channels still cost time, so uniform pruning is the fast choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from edgeslim.families import family_of_type, supported_types

@dataclass(frozen=True)
class Layout:
    """Where a family keeps what prune and lowrank cut: attribute paths from the base model
    (``layers``) and from one layer (the rest). ``attention`` is the module that owns ``pruned_heads``
    and transformers' own ``prune_heads``; ``q``/``k``/``v`` are ``None`` where one fused projection
    holds them (GPT-2, GPT-NeoX, Falcon); ``ffn_key`` is the config field holding the FFN width."""

    layers: str
    attention: str
    q: str | None
    k: str | None
    v: str | None
    o: str
    head_size: str
    ffn_in: str
    ffn_out: str
    ffn_key: str


LAYOUTS = {
    "bert": Layout("encoder.layer", "attention", "attention.self.query", "attention.self.key",
                   "attention.self.value", "attention.output.dense", "attention.self.attention_head_size",
                   "intermediate.dense", "output.dense", "intermediate_size"),
    "distilbert": Layout("transformer.layer", "attention", "attention.q_lin", "attention.k_lin", "attention.v_lin",
                         "attention.out_lin", "attention.attention_head_size", "ffn.lin1", "ffn.lin2", "hidden_dim"),
    "mpnet": Layout("encoder.layer", "attention", "attention.attn.q", "attention.attn.k", "attention.attn.v",
                    "attention.attn.o", "attention.attn.attention_head_size", "intermediate.dense", "output.dense",
                    "intermediate_size"),
    "deberta": Layout("encoder.layer", "attention.self", "attention.self.query_proj", "attention.self.key_proj",
                      "attention.self.value_proj", "attention.output.dense", "attention.self.attention_head_size",
                      "intermediate.dense", "output.dense", "intermediate_size"),
    "gpt2": Layout("h", "attn", None, None, None, "attn.c_proj", "attn.head_dim", "mlp.c_fc", "mlp.c_proj", "n_inner"),
    "opt": Layout("decoder.layers", "self_attn", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                  "self_attn.out_proj", "self_attn.head_dim", "fc1", "fc2", "ffn_dim"),
    "gpt_neox": Layout("layers", "attention", None, None, None, "attention.dense", "attention.head_size",
                       "mlp.dense_h_to_4h", "mlp.dense_4h_to_h", "intermediate_size"),
    "falcon": Layout("h", "self_attention", None, None, None, "self_attention.dense", "self_attention.head_dim",
                     "mlp.dense_h_to_4h", "mlp.dense_4h_to_h", "ffn_hidden_size"),
}


def _at(module, path: str | None):
    if path is None:
        return None
    for name in path.split("."):
        module = getattr(module, name)
    return module


def family_layers(model: nn.Module) -> tuple[Layout, list[nn.Module]]:
    layout = LAYOUTS[family_of(model)]
    return layout, list(_at(base_model(model), layout.layers))


# A projection is an nn.Linear (weight out x in) or transformers' Conv1D (GPT-2: weight in x out).

def is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"


def out_dim(module: nn.Module) -> int:
    """The weight dimension that indexes the projection's outputs."""
    return 1 if is_conv1d(module) else 0


def in_dim(module: nn.Module) -> int:
    return 0 if is_conv1d(module) else 1


def in_width(module: nn.Module) -> int:
    return module.weight.shape[in_dim(module)]


def cut_outputs(module: nn.Module, drop: list[int]) -> None:
    if isinstance(module, RowView):
        cut_outputs(module.parent, [module.offset + i for i in drop])
        module.count -= len(set(drop))
        return
    if not is_conv1d(module):
        return tp.prune_linear_out_channels(module, drop)
    keep = [i for i in range(module.weight.shape[1]) if i not in set(drop)]
    module.weight = nn.Parameter(module.weight.data[:, keep].clone())
    module.bias = nn.Parameter(module.bias.data[keep].clone())
    module.nf = len(keep)


def cut_inputs(module: nn.Module, drop: list[int]) -> None:
    if not is_conv1d(module):
        return tp.prune_linear_in_channels(module, drop)
    keep = [i for i in range(module.weight.shape[0]) if i not in set(drop)]
    module.weight = nn.Parameter(module.weight.data[keep].clone())
    module.nx = len(keep)


class RowView:
    """Outputs ``[offset, offset + count)`` of a fused projection (Phi-3's ``qkv_proj`` and
    ``gate_up_proj``), scored, cut and padded as if they were a Linear of their own.

    Views of one projection are cut or padded from the highest offset down, so the offsets of the
    others stay valid (see :func:`remove_units`, :func:`remove_channels`, :func:`pad_units`).
    """

    def __init__(self, parent: nn.Linear, offset: int, count: int):
        self.parent, self.offset, self.count = parent, offset, count

    @property
    def weight(self) -> torch.Tensor:
        return self.parent.weight[self.offset:self.offset + self.count]

    @property
    def grad(self) -> torch.Tensor | None:
        grad = self.parent.weight.grad
        return None if grad is None else grad[self.offset:self.offset + self.count]

    @property
    def out_features(self) -> int:
        return self.count


def weight_and_grad(projection) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A projection's (or a fused projection's view's) weight and its gradient."""
    if isinstance(projection, RowView):
        return projection.weight, projection.grad
    return projection.weight, projection.weight.grad


def module_of(projection) -> nn.Module:
    """The module that holds a projection's weight (a view's fused projection)."""
    return projection.parent if isinstance(projection, RowView) else projection


@dataclass
class AttentionBlock:
    """One layer's attention: its projections and head layout.

    A *unit* is what head pruning removes at once: one head (BERT), one key/value group (Llama).
    ``original_units`` maps current unit positions to original head numbers (BERT ``pruned_heads``).
    """

    index: int
    module: nn.Module
    q: nn.Linear | None  # None: fused with k and v into one projection (scored and cut through o)
    k: nn.Linear | None
    v: nn.Linear | None
    o: nn.Module
    head_dim: int
    heads_per_unit: int  # query heads per unit
    kv_per_unit: int  # key/value heads per unit: 1, or 0 when units are single query heads (gqa: queries)
    original_units: list[int] = field(default_factory=list)
    kv_heads: int = 0  # key/value heads of the layer (Llama)

    @property
    def units(self) -> int:
        return in_width(self.o) // (self.head_dim * self.heads_per_unit)

    def query_rows(self, unit: int) -> list[int]:
        width = self.head_dim * self.heads_per_unit
        return list(range(unit * width, (unit + 1) * width))

    def kv_rows(self, unit: int) -> list[int]:
        width = self.head_dim * self.kv_per_unit
        return list(range(unit * width, (unit + 1) * width))


@dataclass
class FfnBlock:
    """One layer's feed-forward: the Linears that widen (``inputs``) and the one that narrows."""

    index: int
    inputs: list[nn.Linear]
    output: nn.Linear

    @property
    def width(self) -> int:
        return in_width(self.output)


def base_model(model: nn.Module) -> nn.Module:
    return getattr(model, "base_model", model)


def family_of(model: nn.Module) -> str:
    family = family_of_type(getattr(model.config, "model_type", None))
    if family is None:
        raise ValueError(f"prune supports model types {supported_types()}, not '{model.config.model_type}'")
    return family


def attention_blocks(model: nn.Module, gqa: str = "groups") -> list[AttentionBlock]:
    """Each layer's attention. For Llama, ``gqa`` picks the unit: ``groups`` (a K/V head with its
    query heads) or ``queries`` (one query head; K/V heads stay, every group must keep as many)."""
    family, base, config = family_of(model), base_model(model), model.config
    blocks = []
    if family in LAYOUTS:
        layout, layers = family_layers(model)
        for i, layer in enumerate(layers):
            attn = _at(layer, layout.attention)
            kept = [h for h in range(config.num_attention_heads) if h not in getattr(attn, "pruned_heads", ())]
            blocks.append(AttentionBlock(i, attn, _at(layer, layout.q), _at(layer, layout.k), _at(layer, layout.v),
                                         _at(layer, layout.o), int(_at(layer, layout.head_size)), 1, 1, kept))
        return blocks
    for i, layer in enumerate(base.layers):
        a = layer.self_attn
        q, k, v = query_key_value(a)
        groups = k.out_features // a.head_dim
        if gqa == "queries":
            if isinstance(q, RowView):
                raise ValueError("gqa: queries cannot cut a fused qkv_proj; use gqa: groups")
            heads = q.out_features // a.head_dim
            blocks.append(AttentionBlock(i, a, q, k, v, a.o_proj, a.head_dim, 1, 0, list(range(heads)), groups))
        else:
            blocks.append(AttentionBlock(i, a, q, k, v, a.o_proj, a.head_dim, a.num_key_value_groups, 1,
                                         list(range(groups)), groups))
    return blocks


def query_key_value(attention: nn.Module) -> tuple:
    """A Llama-style attention's query, key and value projections (views of Phi-3's fused qkv_proj)."""
    if not hasattr(attention, "qkv_proj"):
        return attention.q_proj, attention.k_proj, attention.v_proj
    queries = in_width(attention.o_proj)
    kv = (attention.qkv_proj.out_features - queries) // 2
    fused = attention.qkv_proj
    return RowView(fused, 0, queries), RowView(fused, queries, kv), RowView(fused, queries + kv, kv)


def ffn_blocks(model: nn.Module) -> list[FfnBlock]:
    family, base = family_of(model), base_model(model)
    if family in LAYOUTS:
        layout, layers = family_layers(model)
        return [FfnBlock(i, [_at(l, layout.ffn_in)], _at(l, layout.ffn_out)) for i, l in enumerate(layers)]
    return [FfnBlock(i, gate_and_up(l.mlp), l.mlp.down_proj) for i, l in enumerate(base.layers)]


def gate_and_up(mlp: nn.Module) -> list:
    """A gated MLP's gate and up projections (views of Phi-3's fused gate_up_proj)."""
    if not hasattr(mlp, "gate_up_proj"):
        return [mlp.gate_proj, mlp.up_proj]
    width = in_width(mlp.down_proj)
    return [RowView(mlp.gate_up_proj, 0, width), RowView(mlp.gate_up_proj, width, width)]


# ----------------------------------------------------------------------------------- surgery


def remove_units(block: AttentionBlock, drop: list[int]) -> None:
    """Remove attention units ``drop`` (current positions) and fix the module: encoders through
    transformers' own ``prune_heads`` (it records ``pruned_heads``), Llama with torch-pruning."""
    if not drop:
        return
    drop = sorted(set(drop))
    q_rows = [r for u in drop for r in block.query_rows(u)]
    kv_rows = [r for u in drop for r in block.kv_rows(u)]
    removed = {block.original_units[u] for u in drop}
    block.original_units = [u for u in block.original_units if u not in removed]
    module = block.module
    if hasattr(module, "pruned_heads"):  # encoders: transformers cuts them, and replays config.pruned_heads on load
        module.prune_heads(sorted(removed))
        return
    cut_outputs(block.v, kv_rows)  # highest offset first: views of a fused qkv_proj stay valid
    cut_outputs(block.k, kv_rows)
    cut_outputs(block.q, q_rows)
    cut_inputs(block.o, q_rows)
    if block.kv_per_unit == 0:  # Llama, query heads removed: fewer query heads share each K/V head
        module.num_key_value_groups = block.q.out_features // block.head_dim // block.kv_heads
    elif hasattr(module, "num_key_value_heads"):  # Phi-3 reads it to split its fused qkv_proj
        module.num_key_value_heads = block.k.out_features // block.head_dim
    # Llama, whole groups removed: head_dim and num_key_value_groups are unchanged.


def remove_channels(block: FfnBlock, drop: list[int]) -> None:
    """Remove FFN channels ``drop`` (rows of the widening Linears, columns of the narrowing one)."""
    if not drop:
        return
    drop = sorted(set(drop))
    for linear in reversed(block.inputs):  # highest offset first, for views of a fused gate_up_proj
        cut_outputs(linear, drop)
    cut_inputs(block.output, drop)


def _pad_rows(linear: nn.Module, extra: int) -> None:
    """Append ``extra`` zero outputs to a projection (rows of a Linear, columns of a Conv1D, rows
    after a view of a fused projection)."""
    if isinstance(linear, RowView):
        return _insert_zero_rows(linear, extra)
    weight, dim = linear.weight.data, out_dim(linear)
    linear.weight = nn.Parameter(torch.cat([weight, weight.new_zeros(_grown(weight.shape, dim, extra))], dim))
    if linear.bias is not None:
        linear.bias = nn.Parameter(torch.cat([linear.bias.data, linear.bias.data.new_zeros(extra)]))
    if is_conv1d(linear):
        linear.nf = linear.weight.shape[1]
    else:
        linear.out_features = linear.weight.shape[0]


def _pad_cols(linear: nn.Module, extra: int) -> None:
    """Append ``extra`` zero inputs to a projection (columns of a Linear, rows of a Conv1D)."""
    weight, dim = linear.weight.data, in_dim(linear)
    linear.weight = nn.Parameter(torch.cat([weight, weight.new_zeros(_grown(weight.shape, dim, extra))], dim))
    if is_conv1d(linear):
        linear.nx = linear.weight.shape[0]
    else:
        linear.in_features = linear.weight.shape[1]


def _insert_zero_rows(view: RowView, extra: int) -> None:
    parent, end = view.parent, view.offset + view.count
    weight = parent.weight.data
    parent.weight = nn.Parameter(torch.cat([weight[:end], weight.new_zeros(extra, weight.shape[1]), weight[end:]]))
    if parent.bias is not None:
        bias = parent.bias.data
        parent.bias = nn.Parameter(torch.cat([bias[:end], bias.new_zeros(extra), bias[end:]]))
    parent.out_features = parent.weight.shape[0]
    view.count += extra


def _grown(shape: torch.Size, dim: int, extra: int) -> list[int]:
    sizes = list(shape)
    sizes[dim] = extra
    return sizes


def pad_channels(block: FfnBlock, width: int) -> int:
    """Zero-pad an FFN to ``width`` channels (outputs unchanged: act(0)·0 = 0); returns channels added."""
    extra = width - block.width
    if extra > 0:
        for linear in reversed(block.inputs):
            _pad_rows(linear, extra)
        _pad_cols(block.output, extra)
    return max(extra, 0)


def pad_units(block: AttentionBlock, units: int) -> int:
    """Zero-pad a Llama attention to ``units`` units; a zero head adds exactly nothing (its values or
    its output columns are zero). Returns the number of units added."""
    extra = units - block.units
    if extra > 0 and block.kv_per_unit == 0:
        _pad_query_heads(block, units // block.kv_heads)
    elif extra > 0:
        _pad_rows(block.v, extra * block.head_dim * block.kv_per_unit)  # highest offset first
        _pad_rows(block.k, extra * block.head_dim * block.kv_per_unit)
        _pad_rows(block.q, extra * block.head_dim * block.heads_per_unit)
        _pad_cols(block.o, extra * block.head_dim * block.heads_per_unit)
        if hasattr(block.module, "num_key_value_heads"):
            block.module.num_key_value_heads = block.k.out_features // block.head_dim
    return max(extra, 0)


def _pad_query_heads(block: AttentionBlock, per_group: int) -> None:
    """Give every K/V group ``per_group`` query heads by appending zero heads inside each group (query
    heads of a group are contiguous, so padding goes after each group, not at the end)."""
    groups, d = block.kv_heads, block.head_dim
    have = block.q.out_features // d // groups
    q = block.q.weight.data.reshape(groups, have, d, -1)
    block.q.weight = nn.Parameter(torch.cat([q, q.new_zeros(groups, per_group - have, d, q.shape[-1])], 1).reshape(groups * per_group * d, -1))
    if block.q.bias is not None:
        b = block.q.bias.data.reshape(groups, have, d)
        block.q.bias = nn.Parameter(torch.cat([b, b.new_zeros(groups, per_group - have, d)], 1).reshape(-1))
    block.q.out_features = block.q.weight.shape[0]
    o = block.o.weight.data.reshape(block.o.out_features, groups, have, d)
    block.o.weight = nn.Parameter(torch.cat([o, o.new_zeros(o.shape[0], groups, per_group - have, d)], 2).reshape(o.shape[0], -1))
    block.o.in_features = block.o.weight.shape[1]
    block.module.num_key_value_groups = per_group


def sync_config(model: nn.Module) -> None:
    """Write the pruned shapes into ``model.config`` so ``from_pretrained`` rebuilds the same model.

    Call after every layer has the same FFN width (and, for Llama, the same number of units).
    """
    config, family = model.config, family_of(model)
    ffns = ffn_blocks(model)
    blocks = attention_blocks(model)
    if family in LAYOUTS:
        setattr(config, LAYOUTS[family].ffn_key, ffns[0].width)
        config.pruned_heads = {b.index: sorted(b.module.pruned_heads) for b in blocks if getattr(b.module, "pruned_heads", None)}
        return
    config.intermediate_size = ffns[0].width
    b = blocks[0]
    config.head_dim = b.head_dim
    config.num_key_value_heads = b.units * b.kv_per_unit
    config.num_attention_heads = b.units * b.heads_per_unit


# ------------------------------------------------------------------------------ hidden width


@dataclass
class HiddenSlice:
    """One weight that carries the residual stream: ``dim`` of ``module.weight`` indexes hidden channels."""

    module: nn.Module
    kind: str  # "embedding" | "norm" | "linear_in" | "linear_out"

    @property
    def dim(self) -> int:
        return 0 if self.kind in ("norm", "linear_out") else 1


def hidden_slices(model: nn.Module) -> list[HiddenSlice]:
    """Every weight indexed by the hidden (residual) width of a Llama- or BERT-family model.

    A BERT config derives the head size from ``hidden_size / num_attention_heads``, so its hidden width
    is cut together with whole heads (see :func:`heads_for_width`); other layouts keep their width.
    """
    family = family_of(model)
    if family == "bert":
        return _bert_hidden_slices(model)
    if family != "llama":
        raise ValueError(f"hidden width pruning supports the Llama and BERT families, not {model.config.model_type}; "
                         "set hidden: 0")
    base = base_model(model)
    width = hidden_width(model)
    slices = [HiddenSlice(base.embed_tokens, "embedding")]
    for layer in base.layers:
        a, mlp = layer.self_attn, layer.mlp
        slices += [HiddenSlice(norm, "norm") for norm in residual_norms(layer, width)]
        readers = dict.fromkeys(module_of(p) for p in (*query_key_value(a), *gate_and_up(mlp)))  # fused ones once
        slices += [HiddenSlice(m, "linear_in") for m in readers]
        slices += [HiddenSlice(a.o_proj, "linear_out"), HiddenSlice(mlp.down_proj, "linear_out")]
    slices.append(HiddenSlice(base.norm, "norm"))
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and head.weight is not base.embed_tokens.weight:
        slices.append(HiddenSlice(head, "linear_in"))
    return slices


def _bert_hidden_slices(model: nn.Module) -> list[HiddenSlice]:
    """BERT family: the embeddings (or ELECTRA's projection out of narrower ones), every LayerNorm,
    the Linears that read or write the residual stream, and the pooler and classifier around them
    (any Linear or LayerNorm outside the embeddings and layers with a side of the hidden width)."""
    base, width = base_model(model), hidden_width(model)
    embeddings = base.embeddings
    slices = []
    for module in embeddings.modules():
        if isinstance(module, nn.Embedding) and module.embedding_dim == width:
            slices.append(HiddenSlice(module, "embedding"))
        elif isinstance(module, nn.LayerNorm) and module.normalized_shape == (width,):
            slices.append(HiddenSlice(module, "norm"))
    projection = getattr(base, "embeddings_project", None)  # ELECTRA with embedding_size != hidden_size
    if projection is not None:
        slices.append(HiddenSlice(projection, "linear_out"))
    for layer in base.encoder.layer:
        slices += [HiddenSlice(layer.attention.self.query, "linear_in"), HiddenSlice(layer.attention.self.key, "linear_in"),
                   HiddenSlice(layer.attention.self.value, "linear_in"), HiddenSlice(layer.attention.output.dense, "linear_out"),
                   HiddenSlice(layer.attention.output.LayerNorm, "norm"), HiddenSlice(layer.intermediate.dense, "linear_in"),
                   HiddenSlice(layer.output.dense, "linear_out"), HiddenSlice(layer.output.LayerNorm, "norm")]
    inside = {id(m) for part in (embeddings, base.encoder) for m in part.modules()}
    if projection is not None:
        inside.add(id(projection))
    for module in model.modules():
        if id(module) in inside:
            continue
        if isinstance(module, nn.Linear):
            if module.out_features == width:
                slices.append(HiddenSlice(module, "linear_out"))
            if module.in_features == width:
                slices.append(HiddenSlice(module, "linear_in"))
        elif isinstance(module, nn.LayerNorm) and module.normalized_shape == (width,):
            slices.append(HiddenSlice(module, "norm"))
    return slices


def heads_for_width(model: nn.Module, width: int) -> int:
    """Heads each BERT layer keeps at hidden width ``width``: its head size is ``hidden / heads``."""
    head_size = attention_blocks(model)[0].head_dim
    return width // head_size


def residual_norms(layer: nn.Module, width: int) -> list[nn.Module]:
    """The norms of a decoder layer that act on the residual stream: its direct children with a 1-D
    weight of the hidden width (Llama has two, Gemma2 four; Qwen3's per-head q/k norms sit inside the
    attention module and are left alone)."""
    return [child for child in layer.children()
            if not isinstance(child, (nn.Linear, nn.Embedding)) and isinstance(getattr(child, "weight", None), torch.Tensor)
            and child.weight.dim() == 1 and child.weight.shape[0] == width]


def hidden_width(model: nn.Module) -> int:
    base = base_model(model)
    if family_of(model) == "bert":
        return base.encoder.layer[0].output.dense.out_features
    return base.embed_tokens.embedding_dim


def remove_hidden(model: nn.Module, drop: list[int]) -> None:
    """Remove hidden channels ``drop`` from every weight on the residual stream (torch-pruning's
    embedding/linear pruners; RMSNorm weights sliced), re-tie a tied LM head, update the config."""
    if not drop:
        return
    drop = sorted(set(drop))
    base = base_model(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embed = getattr(base, "embed_tokens", None)
    tied = head is not None and embed is not None and head.weight is embed.weight
    keep = torch.tensor([i for i in range(hidden_width(model)) if i not in set(drop)])
    for s in hidden_slices(model):
        if s.kind == "embedding":
            tp.prune_embedding_out_channels(s.module, drop)
        elif s.kind == "norm":
            s.module.weight = nn.Parameter(s.module.weight.data[keep].clone())
            if isinstance(getattr(s.module, "bias", None), torch.Tensor):
                s.module.bias = nn.Parameter(s.module.bias.data[keep].clone())
            if hasattr(s.module, "normalized_shape"):  # LayerNorm checks its input against it
                s.module.normalized_shape = (len(keep),)
        elif s.kind == "linear_in":
            tp.prune_linear_in_channels(s.module, drop)
        else:
            tp.prune_linear_out_channels(s.module, drop)
    if tied:
        head.weight = base.embed_tokens.weight
        head.in_features = head.weight.shape[1]
    model.config.hidden_size = hidden_width(model)
    if family_of(model) == "bert":  # every layer kept hidden / head size heads: a plain config says so
        blocks = attention_blocks(model)
        for block in blocks:
            block.module.pruned_heads = set()
        model.config.num_attention_heads = blocks[0].units
        model.config.pruned_heads = {}
