"""Where the prunable parts of a Hugging Face transformer are, and how to cut them so it still reloads.

Cutting rows and columns leaves the HF bookkeeping stale (``num_attention_heads``, ``all_head_size``,
``intermediate_size``, ...), and a model whose config disagrees with its weights fails to reload. Two
kinds of architecture are known (the ``structure`` of :mod:`edgeslim.families`):

* a :class:`Layout` (BERT and its relatives, DistilBERT, MPNet, DeBERTa-v2, GPT-2, OPT, GPT-NeoX,
  Falcon): attribute paths to each layer's attention and FFN. Heads are removed by transformers' own
  ``prune_heads`` and recorded in ``config.pruned_heads`` (original head numbers), which HF replays on
  ``from_pretrained``, so every layer may keep a different number. Types whose config derives the
  head size from ``hidden_size / num_attention_heads`` and cannot reload fewer heads
  (``Family.heads_with_hidden``) lose heads together with hidden width, the same number in every
  layer (:mod:`edgeslim.compress.hidden_width`).
* the Llama family (Llama, Mistral, Qwen2, Qwen3, Gemma2, Phi-3: ``layers[i].self_attn.q_proj`` +
  ``mlp.gate_proj``, or Phi-3's fused ``qkv_proj``/``gate_up_proj``): the unit of head pruning is a
  key/value group (one K/V head and the query heads that share it), so grouped-query attention stays
  grouped; the config holds one head count for all layers.

A standard config holds one FFN width (and, for Llama, one head count) for all layers. Where layers
end up different, the narrower ones are padded with exact zeros (zero rows in, zero columns out) up to
the widest: the model reloads with ``AutoModel...from_pretrained`` and identical outputs, but the padded
channels still cost time, so uniform pruning is the fast choice. The cuts and pads themselves are in
:mod:`edgeslim.compress.projections`, hidden-width pruning in :mod:`edgeslim.compress.hidden_width`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from edgeslim.compress.projections import RowView, cut_inputs, cut_outputs, in_width, pad_inputs, pad_outputs
from edgeslim.families import family_of_type, supported_types


@dataclass(frozen=True)
class Layout:
    """Where a family keeps what prune and lowrank cut: attribute paths from the base model
    (``layers``) and from one layer (the rest). ``attention`` is the module that owns ``pruned_heads``
    and transformers' own ``prune_heads``; ``q``/``k``/``v`` are ``None`` where one fused projection
    holds them (GPT-2, GPT-NeoX, Falcon): ``qkv`` is then that projection, its rows ordered
    ``q|k|v`` (``qkv_order="blocks"``, GPT-2) or head by head (``"heads"``: each head's q, k, v rows
    together; Falcon with ``multi_query`` keeps all query heads first and one shared K/V head last);
    ``ffn_key`` is the config field holding the FFN width. ``per_head`` names further projections
    whose outputs are laid out by head (DeBERTa's position projections, where present);
    ``head_table`` (from the base model) a table with a column per head shared by every layer
    (MPNet's relative position bias)."""

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
    qkv: str | None = None
    qkv_order: str = "blocks"
    per_head: tuple[str, ...] = ()
    head_table: str | None = None


LAYOUTS = {
    "bert": Layout("encoder.layer", "attention", "attention.self.query", "attention.self.key",
                   "attention.self.value", "attention.output.dense", "attention.self.attention_head_size",
                   "intermediate.dense", "output.dense", "intermediate_size"),
    "distilbert": Layout("transformer.layer", "attention", "attention.q_lin", "attention.k_lin", "attention.v_lin",
                         "attention.out_lin", "attention.attention_head_size", "ffn.lin1", "ffn.lin2", "hidden_dim"),
    "mpnet": Layout("encoder.layer", "attention", "attention.attn.q", "attention.attn.k", "attention.attn.v",
                    "attention.attn.o", "attention.attn.attention_head_size", "intermediate.dense", "output.dense",
                    "intermediate_size", head_table="encoder.relative_attention_bias"),
    "deberta": Layout("encoder.layer", "attention.self", "attention.self.query_proj", "attention.self.key_proj",
                      "attention.self.value_proj", "attention.output.dense", "attention.self.attention_head_size",
                      "intermediate.dense", "output.dense", "intermediate_size",
                      per_head=("attention.self.pos_key_proj", "attention.self.pos_query_proj")),
    "gpt2": Layout("h", "attn", None, None, None, "attn.c_proj", "attn.head_dim", "mlp.c_fc", "mlp.c_proj", "n_inner",
                   qkv="attn.c_attn"),
    "opt": Layout("decoder.layers", "self_attn", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                  "self_attn.out_proj", "self_attn.head_dim", "fc1", "fc2", "ffn_dim"),
    "gpt_neox": Layout("layers", "attention", None, None, None, "attention.dense", "attention.head_size",
                       "mlp.dense_h_to_4h", "mlp.dense_4h_to_h", "intermediate_size", qkv="attention.query_key_value",
                       qkv_order="heads"),
    "falcon": Layout("h", "self_attention", None, None, None, "self_attention.dense", "self_attention.head_dim",
                     "mlp.dense_h_to_4h", "mlp.dense_4h_to_h", "ffn_hidden_size", qkv="self_attention.query_key_value",
                     qkv_order="heads"),
}


def at_path(module, path: str | None, optional: bool = False):
    if path is None:
        return None
    for name in path.split("."):
        if optional and not hasattr(module, name):
            return None
        module = getattr(module, name)
    return module


def family_layers(model: nn.Module) -> tuple[Layout, list[nn.Module]]:
    layout = LAYOUTS[family_of(model)]
    return layout, list(at_path(base_model(model), layout.layers))


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
            attn = at_path(layer, layout.attention)
            kept = [h for h in range(config.num_attention_heads) if h not in getattr(attn, "pruned_heads", ())]
            blocks.append(AttentionBlock(i, attn, at_path(layer, layout.q), at_path(layer, layout.k), at_path(layer, layout.v),
                                         at_path(layer, layout.o), int(at_path(layer, layout.head_size)), 1, 1, kept))
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
        return [FfnBlock(i, [at_path(l, layout.ffn_in)], at_path(l, layout.ffn_out)) for i, l in enumerate(layers)]
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


def pad_channels(block: FfnBlock, width: int) -> int:
    """Zero-pad an FFN to ``width`` channels (outputs unchanged: act(0)·0 = 0); returns channels added."""
    extra = width - block.width
    if extra > 0:
        for linear in reversed(block.inputs):
            pad_outputs(linear, extra)
        pad_inputs(block.output, extra)
    return max(extra, 0)


def pad_units(block: AttentionBlock, units: int) -> int:
    """Zero-pad a Llama attention to ``units`` units; a zero head adds exactly nothing (its values or
    its output columns are zero). Returns the number of units added."""
    extra = units - block.units
    if extra > 0 and block.kv_per_unit == 0:
        _pad_query_heads(block, units // block.kv_heads)
    elif extra > 0:
        pad_outputs(block.v, extra * block.head_dim * block.kv_per_unit)  # highest offset first
        pad_outputs(block.k, extra * block.head_dim * block.kv_per_unit)
        pad_outputs(block.q, extra * block.head_dim * block.heads_per_unit)
        pad_inputs(block.o, extra * block.head_dim * block.heads_per_unit)
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
