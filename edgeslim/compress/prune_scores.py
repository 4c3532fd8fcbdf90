"""How much each prunable unit matters: attention heads, FFN channels and hidden dimensions scored by
weight magnitude, by |weight x gradient| of the task loss (Taylor), or by calibration activations.
:func:`importance` is the one entry point :mod:`edgeslim.compress.prune` plans from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from edgeslim.compress import hf_fixups as fx
from edgeslim.compress import hidden_width as hw
from edgeslim.compress import projections as pj
from edgeslim.errors import EdgeslimError


def _unit_params(block: fx.AttentionBlock, unit: int) -> list[tuple[torch.Tensor, torch.Tensor | None, int, list[int]]]:
    """(weight, grad, dim, indices) of every weight slice a head unit owns (where q, k and v are one
    fused projection, only its slice of the output projection)."""
    q, kv = block.query_rows(unit), block.kv_rows(unit)
    owned = [(block.o.weight, block.o.weight.grad, pj.in_dim(block.o), q)]
    if block.q is not None:
        owned += [(*pj.weight_and_grad(block.q), 0, q), (*pj.weight_and_grad(block.k), 0, kv),
                  (*pj.weight_and_grad(block.v), 0, kv)]
    return owned


def _slice_score(weight, grad, dim, idx, method) -> torch.Tensor:
    index = torch.tensor(idx, dtype=torch.long)
    w = weight.detach().index_select(dim, index)
    if method == "taylor":
        if grad is None:
            raise RuntimeError("taylor importance needs gradients; run a backward pass first")
        return (w * grad.index_select(dim, index)).abs().sum(1 - dim)
    return w.pow(2).sum(1 - dim)


@dataclass
class Scores:
    """Importance per layer of each head unit and FFN channel, and of each hidden channel (or None)."""

    heads: list[torch.Tensor]
    ffn: list[torch.Tensor]
    hidden: torch.Tensor | None = None


def _hidden_weight_scores(model: nn.Module, method: str) -> torch.Tensor:
    total = 0
    for s in hw.hidden_slices(model):
        weight = s.module.weight
        if weight.dim() == 1:  # a norm's scale
            w = weight.detach()
            total = total + ((w * weight.grad).abs() if method == "taylor" else w.pow(2))
        else:
            total = total + _slice_score(weight, weight.grad, s.dim, list(range(weight.shape[s.dim])), method)
    return total


def magnitude_or_taylor(model: nn.Module, method: str, hidden: bool = False, gqa: str = "groups") -> Scores:
    """Scores from weights (``magnitude``: squared L2) or weights x gradients (``taylor``)."""
    heads = []
    for block in fx.attention_blocks(model, gqa):
        heads.append(torch.stack([sum(_slice_score(*p, method).sum() for p in _unit_params(block, u))
                                  for u in range(block.units)]))
    ffns = []
    for block in fx.ffn_blocks(model):
        idx = list(range(block.width))
        score = sum(_slice_score(*pj.weight_and_grad(l), pj.out_dim(pj.module_of(l)), idx, method) for l in block.inputs)
        output = block.output
        ffns.append(score + _slice_score(output.weight, output.weight.grad, pj.in_dim(output), idx, method))
    return Scores(heads, ffns, _hidden_weight_scores(model, method) if hidden else None)


def taylor_scores(model: nn.Module, batches: Iterable[dict], hidden: bool = False, gqa: str = "groups") -> Scores:
    """First-order Taylor importance: accumulate task-loss gradients over ``batches`` (with labels)."""
    model.eval()
    model.zero_grad(set_to_none=True)
    seen = 0
    for batch in batches:
        loss = model(**batch).loss
        if loss is None:
            raise EdgeslimError("prune: importance: taylor needs labeled data; use magnitude or calibration")
        loss.backward()
        seen += 1
    if not seen:
        raise EdgeslimError("prune: importance: taylor needs training examples, but the train split is empty")
    scores = magnitude_or_taylor(model, "taylor", hidden, gqa)
    model.zero_grad(set_to_none=True)
    return scores


@torch.no_grad()
def calibration_scores(model: nn.Module, batches: Iterable[dict], hidden: bool = False, gqa: str = "groups") -> Scores:
    """Activation importance on real inputs (batch 1, no padding): mean |input| of each channel of the
    narrowing Linears (attention output, FFN output) times the norm of its weight column; for hidden
    channels, mean |residual stream| summed over the norms that read it."""
    model.eval()
    attn, ffn = fx.attention_blocks(model, gqa), fx.ffn_blocks(model)
    watched = [b.o for b in attn] + [b.output for b in ffn]
    if hidden:
        watched += [s.module for s in hw.hidden_slices(model) if s.kind == "norm"]
    sums: dict[nn.Module, torch.Tensor] = {}
    count = 0

    def hook(module, inputs, _output):
        x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1]).abs().sum(0)
        sums[module] = sums.get(module, 0) + x

    handles = [m.register_forward_hook(hook) for m in watched]
    try:
        for batch in batches:
            model(**{k: v for k, v in batch.items() if k != "labels"})
            count += int(batch["input_ids"].numel())
    finally:
        for handle in handles:
            handle.remove()
    if not count:
        raise EdgeslimError("prune: importance: calibration needs training examples, but the train split is empty")
    heads = [(sums[b.o] / count * _input_norms(b.o)).reshape(b.units, -1).sum(1) for b in attn]
    ffns = [sums[b.output] / count * _input_norms(b.output) for b in ffn]
    residual = sum(sums[m] / count for m in watched[len(attn) + len(ffn):]) if hidden else None
    return Scores(heads, ffns, residual)


def _input_norms(projection: nn.Module) -> torch.Tensor:
    """The L2 norm of the weights each input channel of a projection feeds."""
    return projection.weight.norm(dim=pj.out_dim(projection))


def importance(model: nn.Module, method: str, batches: Iterable[dict] | None = None, hidden: bool = False,
               gqa: str = "groups") -> Scores:
    """Importance :class:`Scores` by ``method``; ``hidden`` also scores the residual channels; ``gqa``
    says what a Llama head unit is (see :func:`edgeslim.compress.hf_fixups.attention_blocks`)."""
    if method == "magnitude":
        return magnitude_or_taylor(model, "magnitude", hidden, gqa)
    if batches is None:
        raise ValueError(f"importance '{method}' needs batches of data")
    if method == "taylor":
        return taylor_scores(model, batches, hidden, gqa)
    return calibration_scores(model, batches, hidden, gqa)


# ------------------------------------------------------------------------------------- planning
