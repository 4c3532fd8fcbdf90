"""Hidden-width pruning: every weight on the residual stream of a model, and the cut that narrows them
all at once (the embeddings, every norm, the projections that read or write the stream, a tied LM
head, a pooler and classifier) so the config still describes the model.

Llama-family configs state the head size, so their heads stay. The layout families (BERT and its
relatives, MPNet, DeBERTa-v2, GPT-2, OPT, GPT-NeoX, Falcon) derive it from ``hidden_size /
num_attention_heads``: there hidden width and heads go together, the same number of heads in every
layer (:func:`remove_heads_evenly`), which is also how the types that cannot reload per-layer pruned
heads lose heads at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from edgeslim.compress.hf_fixups import (LAYOUTS, at_path, attention_blocks, base_model, family_layers, family_of,
                                         gate_and_up, query_key_value)
from edgeslim.compress.projections import (cut_inputs, cut_outputs, in_dim, in_width, is_conv1d, module_of, out_dim,
                                          out_width)


@dataclass
class HiddenSlice:
    """One weight that carries the residual stream: ``dim`` of ``module.weight`` indexes hidden channels."""

    module: nn.Module
    kind: str  # "embedding" | "norm" | "linear_in" | "linear_out"

    @property
    def dim(self) -> int:
        if self.kind == "norm":
            return 0
        if self.kind == "embedding":  # an embedding table is vocabulary x hidden
            return 1
        return out_dim(self.module) if self.kind == "linear_out" else in_dim(self.module)


def hidden_slices(model: nn.Module) -> list[HiddenSlice]:
    """Every weight indexed by the hidden (residual) width of a model of a known structure.

    Where the config derives the head size from ``hidden_size / num_attention_heads`` (the
    :data:`~edgeslim.compress.hf_fixups.LAYOUTS` families), the hidden width is cut together with whole
    heads (see :func:`remove_heads_evenly`); the Llama family keeps its heads and head size.
    """
    if family_of(model) in LAYOUTS:
        return _layout_hidden_slices(model)
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


def _layout_hidden_slices(model: nn.Module) -> list[HiddenSlice]:
    """A layout family: in each layer the projections that read the stream (q, k, v or the fused qkv,
    per-head position projections, the FFN's widening Linear) and write it (the attention output, the
    FFN's narrowing Linear); everywhere else, every embedding, norm, Linear or Conv1D with a side of
    the hidden width (embeddings, norms, ELECTRA's and OPT's projections, pooler, classifier, an untied
    LM head). A head tied to the word embeddings is left to :func:`remove_hidden`, which re-ties it."""
    layout, layers = family_layers(model)
    width = hidden_width(model)
    slices, handled = [], set()
    for layer in layers:
        readers = [layout.q, layout.k, layout.v, layout.qkv, *layout.per_head, layout.ffn_in]
        for path, kind in [(p, "linear_in") for p in readers] + [(layout.o, "linear_out"), (layout.ffn_out, "linear_out")]:
            module = at_path(layer, path, optional=True)
            if module is not None:
                slices.append(HiddenSlice(module, kind))
                handled.add(id(module))
    tied = {id(model.get_input_embeddings().weight)} if hasattr(model, "get_input_embeddings") else set()
    for module in model.modules():
        if id(module) in handled:
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        if isinstance(module, nn.Embedding):
            if module.embedding_dim == width:
                slices.append(HiddenSlice(module, "embedding"))
        elif isinstance(module, nn.Linear) or is_conv1d(module):
            if id(weight) in tied:
                continue  # an LM head tied to the word embeddings
            if out_width(module) == width:
                slices.append(HiddenSlice(module, "linear_out"))
            if in_width(module) == width:
                slices.append(HiddenSlice(module, "linear_in"))
        elif weight.dim() == 1 and weight.shape[0] == width and "norm" in type(module).__name__.lower():
            slices.append(HiddenSlice(module, "norm"))
    return slices


def heads_for_width(model: nn.Module, width: int) -> int:
    """Heads each layer of a layout family keeps at hidden width ``width``: its head size is ``hidden / heads``."""
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
    if family_of(model) in LAYOUTS:
        layout, layers = family_layers(model)
        return out_width(at_path(layers[0], layout.ffn_out))
    return base_model(model).embed_tokens.embedding_dim


#: Config fields that hold the hidden width when they equal it (GPT-2 ``n_embd`` and the like are
#: ``hidden_size`` through the config's attribute map; OPT's embedding projection width, DeBERTa's
#: pooler and embedding sizes only where they were the hidden width too).
CONFIG_WIDTHS = ("hidden_size", "word_embed_proj_dim", "pooler_hidden_size", "embedding_size")
#: Module attributes transformers reads at run time that hold the hidden width or the head count.
MODULE_WIDTHS = ("hidden_size", "embed_dim", "split_size", "all_head_size", "dim")
MODULE_HEADS = ("num_attention_heads", "num_heads", "n_head", "n_heads", "num_kv_heads")


def _retarget(modules, names: tuple[str, ...], old: int, new: int) -> None:
    """Set every integer attribute ``names`` of ``modules`` that equals ``old`` to ``new``."""
    for module in modules:
        for name in names:
            if type(getattr(module, name, None)) is int and getattr(module, name) == old:
                setattr(module, name, new)


def fused_qkv_rows(layout, config, heads: int, head_size: int, drop: list[int]) -> list[int]:
    """Output rows of a fused qkv projection that belong to heads ``drop`` (see :class:`Layout`)."""
    d = head_size
    if layout.qkv_order == "blocks":  # q | k | v, each heads x d
        return [part * heads * d + h * d + j for part in range(3) for h in drop for j in range(d)]
    if getattr(config, "multi_query", False) and not getattr(config, "new_decoder_architecture", False):
        return [h * d + j for h in drop for j in range(d)]  # the shared K/V head stays
    return [h * 3 * d + j for h in drop for j in range(3 * d)]


def remove_heads_evenly(model: nn.Module, drops: list[list[int]]) -> None:
    """Remove heads ``drops[i]`` (current positions) from layer ``i`` of a layout family, the same number
    in every layer, cutting the projections directly (no ``pruned_heads``: with the hidden width cut in
    proportion by :func:`remove_hidden`, the config's head count and width describe every layer). A head
    table shared by all layers (MPNet) needs the same heads dropped everywhere and loses their columns."""
    count = {len(set(d)) for d in drops}
    if len(count) != 1:
        raise ValueError("heads are removed with hidden width only in equal numbers per layer")
    if not count.pop():
        return
    layout, layers = family_layers(model)
    before = attention_blocks(model)[0].units
    for layer, drop in zip(layers, drops):
        drop = sorted(set(drop))
        d = int(at_path(layer, layout.head_size))
        inner = [h * d + j for h in drop for j in range(d)]
        for path in (layout.q, layout.k, layout.v, *layout.per_head):
            module = at_path(layer, path, optional=True)
            if module is not None:
                cut_outputs(module, inner)
        if layout.qkv:
            cut_outputs(at_path(layer, layout.qkv), fused_qkv_rows(layout, model.config, before, d, drop))
        cut_inputs(at_path(layer, layout.o), inner)
        attention = list(at_path(layer, layout.attention).modules())
        _retarget(attention, MODULE_HEADS, before, before - len(drop))
        _retarget(attention, MODULE_WIDTHS, before * d, (before - len(drop)) * d)  # its inner width
    if layout.head_table:
        if any(sorted(set(d)) != sorted(set(drops[0])) for d in drops):
            raise ValueError(f"{model.config.model_type} shares one table of head biases across layers: "
                             "drop the same heads in every layer")
        table = at_path(base_model(model), layout.head_table)
        keep = [h for h in range(table.embedding_dim) if h not in set(drops[0])]
        table.weight = nn.Parameter(table.weight.data[:, keep].clone())
        table.embedding_dim = len(keep)


def remove_hidden(model: nn.Module, drop: list[int]) -> None:
    """Remove hidden channels ``drop`` from every weight on the residual stream (torch-pruning's
    embedding pruner, the projections' cuts; norm weights sliced), re-tie a tied LM head, and update
    the config and the run-time attributes that hold the width; a layout family's config then also
    says its (evenly) kept head count."""
    if not drop:
        return
    drop = sorted(set(drop))
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = head is not None and embed is not None and head.weight is embed.weight
    old = hidden_width(model)
    keep = torch.tensor([i for i in range(old) if i not in set(drop)])
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
            cut_inputs(s.module, drop)
        else:
            cut_outputs(s.module, drop)
    if tied:
        head.weight = embed.weight
        head.in_features = head.weight.shape[1]
    new = hidden_width(model)
    config = model.config
    _retarget([config], CONFIG_WIDTHS, old, new)
    _retarget(model.modules(), MODULE_WIDTHS, old, new)
    if family_of(model) in LAYOUTS:  # every layer kept hidden / head size heads: a plain config says so
        blocks = attention_blocks(model)
        for block in blocks:
            if hasattr(block.module, "pruned_heads"):
                block.module.pruned_heads = set()
        _retarget([config], ("num_kv_heads",), config.num_attention_heads, blocks[0].units)
        config.num_attention_heads = blocks[0].units
        config.pruned_heads = {}
