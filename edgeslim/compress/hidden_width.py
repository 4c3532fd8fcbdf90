"""Hidden-width pruning: every weight on the residual stream of a Llama- or BERT-family model, and
the cut that narrows them all at once (the embeddings, every norm, the Linears that read or write the
stream, a tied LM head, a pooler and classifier) so the config still describes the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from edgeslim.compress.hf_fixups import attention_blocks, base_model, family_of, gate_and_up, query_key_value
from edgeslim.compress.projections import module_of


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
