"""Stage ``prune``: structured pruning of attention heads, FFN channels and (Llama family) hidden width,
so the model is really smaller and faster (whole rows and columns go, not scattered zeros).

Llama-family heads go as whole key/value groups (``gqa: groups``) or as the same number of query
heads from every group (``gqa: queries``), so grouped-query attention stays grouped.

Importance decides what goes: ``magnitude`` (L2 norm of every weight a head or channel owns, as in
torch-pruning's group magnitude importance), ``taylor`` (|weight x gradient| of the task loss on a few
batches, torch-pruning's group Taylor importance) or ``calibration`` (mean activation x output-weight
norm on a few real inputs, Wanda-style). ``scope: uniform`` removes the same fraction in every layer;
``scope: global`` ranks all layers together (scores normalized per layer) so weak layers lose more.
``layers`` overrides single layers. The weights are cut with torch-pruning's pruning functions and
:mod:`edgeslim.compress.hf_fixups` makes the HF modules and config agree with them, so the saved folder
reloads with ``AutoModelFor...from_pretrained`` and gives identical outputs. A short KD recovery against
the teacher (``recovery.steps``) can follow.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from edgeslim.artifacts import Artifact
from edgeslim.compress import hf_fixups as fx
from edgeslim.compress import hidden_width as hw
from edgeslim.compress.prune_scores import importance
from edgeslim.compress.prune_config import PruneConfig, keep_count
from edgeslim.compress.torch_artifacts import (check_reloads, count_params, load_torch, read_vocab_map, recover,
                                               save_torch)
from edgeslim.errors import EdgeslimError
from edgeslim.families import heads_with_hidden_reason
from edgeslim.stage import StageContext


# ----------------------------------------------------------------------------------- importance


def _lowest(score: torch.Tensor, keep: int) -> list[int]:
    """Positions of the ``len(score) - keep`` least important entries."""
    order = torch.argsort(score, stable=True)
    return sorted(order[: len(score) - keep].tolist())


def plan_uniform(scores: list[torch.Tensor], ratios: list[float], round_to: int = 1) -> list[list[int]]:
    """Per layer, drop the least important ``ratio`` of entries (keep rounded up to ``round_to``)."""
    return [_lowest(s, keep_count(len(s), r, round_to)) for s, r in zip(scores, ratios)]


def plan_global(scores: list[torch.Tensor], ratio: float, round_to: int = 1, min_keep: int = 1) -> list[list[int]]:
    """Drop ``ratio`` of all entries, ranked across layers by score / layer mean; every layer keeps
    at least ``min_keep`` and a multiple of ``round_to``."""
    if not scores:
        return []
    total = sum(len(s) for s in scores)
    n_drop = int(math.floor(total * ratio + 0.5))
    flat = torch.cat([s / s.mean().clamp_min(1e-12) for s in scores])
    layer_of = torch.cat([torch.full((len(s),), i) for i, s in enumerate(scores)])
    dropped = [0] * len(scores)
    for pos in torch.argsort(flat, stable=True).tolist():
        if n_drop == 0:
            break
        layer = int(layer_of[pos])
        if len(scores[layer]) - dropped[layer] > min_keep:
            dropped[layer] += 1
            n_drop -= 1
    plans = []
    for s, d in zip(scores, dropped):
        keep = len(s) - d
        if round_to > 1:
            keep = min(len(s), int(math.ceil(keep / round_to) * round_to))
        plans.append(_lowest(s, keep))
    return plans


def plan(config: PruneConfig, head_scores: list[torch.Tensor], ffn_scores: list[torch.Tensor],
         kv_groups: list[int] | None = None):
    """Which head units and FFN channels each layer loses (hidden channels: see :func:`plan_hidden`).

    ``kv_groups`` (K/V heads per layer) turns on gqa: queries planning: every group loses as many
    of its query heads, the least important ones of that group."""
    n = len(head_scores)
    overridden_heads = {i for i in range(n) if i in config.layers and config.layers[i].heads is not None}
    overridden_ffn = {i for i in range(n) if i in config.layers and config.layers[i].ffn is not None}
    if kv_groups is not None:
        heads = [plan_within_groups(s, g, config.heads_for(i)) for i, (s, g) in enumerate(zip(head_scores, kv_groups))]
    else:
        heads = _plan_part(head_scores, config.heads, config.scope, 1, overridden_heads, config.heads_for)
    ffn = _plan_part(ffn_scores, config.ffn, config.scope, config.round_to, overridden_ffn, config.ffn_for)
    for i in range(n):
        if len(heads[i]) >= len(head_scores[i]):
            raise EdgeslimError(f"prune: layer {i} would lose every head; lower heads or its layers override")
    return heads, ffn


def plan_within_groups(scores: torch.Tensor, groups: int, value: float | list[int]) -> list[int]:
    """Query heads to remove when every one of ``groups`` contiguous groups loses as many."""
    if isinstance(value, list):
        return sorted(value)
    size = len(scores) // groups
    keep = keep_count(size, value)
    return sorted(g * size + i for g in range(groups) for i in _lowest(scores[g * size:(g + 1) * size], keep))


def plan_hidden(config: PruneConfig, scores: torch.Tensor | None) -> list[int]:
    """Hidden channels to remove (the same in every layer: they are one residual stream)."""
    if scores is None or config.hidden == 0:
        return []
    return plan_uniform([scores], [config.hidden], config.round_to)[0]


def plan_heads_with_hidden(model: nn.Module, config: PruneConfig, scores) -> tuple[list[list[int]], list[int]]:
    """Heads (the same number in every layer) and hidden channels (that many heads' width) to remove
    where a config ties the head size to ``hidden / heads``: ``hidden`` sets the width and the heads
    follow, or ``heads`` sets the heads and the width follows. Where one head table serves every layer
    (MPNet), the same heads go everywhere: the least important summed over layers."""
    blocks = fx.attention_blocks(model)
    heads, head_size = blocks[0].units, blocks[0].head_dim
    if any(b.units != heads for b in blocks):
        raise EdgeslimError("prune: layers already have different head counts; heads and hidden width can only "
                            "be removed together from a model whose layers have as many heads")
    if config.hidden > 0:
        hidden_drops = plan_uniform([scores.hidden], [config.hidden], head_size)[0]
        keep = hw.heads_for_width(model, hw.hidden_width(model) - len(hidden_drops))
    else:
        keep = keep_count(heads, config.heads)
        hidden_drops = _lowest(scores.hidden, hw.hidden_width(model) - (heads - keep) * head_size)
    if keep < 1:
        raise EdgeslimError(f"prune: that removes every head (each layer has {heads}); use a smaller ratio")
    if fx.LAYOUTS[fx.family_of(model)].head_table:
        shared = _lowest(torch.stack(scores.heads).sum(0), keep)
        return [shared for _ in blocks], hidden_drops
    return [_lowest(s, keep) for s in scores.heads], hidden_drops


def _plan_part(scores, ratio, scope, round_to, overridden, ratio_for):
    plans = [[] for _ in scores]
    free = [i for i in range(len(scores)) if i not in overridden]
    if scope == "global":
        for i, drop in zip(free, plan_global([scores[i] for i in free], ratio, round_to)):
            plans[i] = drop
    else:
        for i in free:
            plans[i] = plan_uniform([scores[i]], [ratio], round_to)[0]
    for i in overridden:
        value = ratio_for(i)
        plans[i] = sorted(value) if isinstance(value, list) else plan_uniform([scores[i]], [value], round_to)[0]
    return plans


# ------------------------------------------------------------------------------------- applying


def apply_plan(model: nn.Module, head_drops: list[list[int]], ffn_drops: list[list[int]],
               gqa: str = "groups") -> dict[str, Any]:
    """Cut the planned units and channels, pad layers to a common shape where the config needs one,
    and make the config agree, so ``save_pretrained``/``from_pretrained`` round-trips exactly."""
    family = fx.family_of(model)
    for block, drop in zip(fx.attention_blocks(model, gqa), head_drops):
        fx.remove_units(block, drop)
    for block, drop in zip(fx.ffn_blocks(model), ffn_drops):
        fx.remove_channels(block, drop)
    widths = [b.width for b in fx.ffn_blocks(model)]
    padded = {"ffn_channels": sum(fx.pad_channels(b, max(widths)) for b in fx.ffn_blocks(model))}
    units = [b.units for b in fx.attention_blocks(model, gqa)]
    if family == "llama":
        padded["head_units"] = sum(fx.pad_units(b, max(units)) for b in fx.attention_blocks(model, gqa))
    fx.sync_config(model)
    return {"heads_per_layer": [b.units * b.heads_per_unit for b in fx.attention_blocks(model)],
            "kept_head_units": units, "ffn_per_layer": widths, "padded": padded}


def prune_model(model: nn.Module, config: PruneConfig, batches: Iterable[dict] | None = None) -> dict[str, Any]:
    """Prune ``model`` in place per ``config``; returns what was kept and the parameter counts.

    ``batches``: dicts of tensors for ``taylor`` (with ``labels``) or ``calibration`` importance.
    """
    try:
        config.check_against(model.config, "")
    except ValueError as exc:
        raise EdgeslimError(f"prune: {exc}") from None
    before = count_params(model)
    gqa = "queries" if config.queries_mode(model.config) else "groups"
    # heads and hidden width go together where the config derives the head size (see hidden_width)
    coupled = fx.family_of(model) in fx.LAYOUTS and (config.hidden > 0 or (
        config.heads > 0 and heads_with_hidden_reason(model.config.model_type) is not None))
    scores = importance(model, config.importance, batches, hidden=config.hidden > 0 or coupled, gqa=gqa)
    kv_groups = [b.kv_heads for b in fx.attention_blocks(model, gqa)] if gqa == "queries" else None
    if coupled:
        head_drops, hidden_drops = plan_heads_with_hidden(model, config, scores)
        _, ffn_drops = plan(config.model_copy(update={"heads": 0.0}), scores.heads, scores.ffn)
        summary = apply_plan(model, [[] for _ in head_drops], ffn_drops, gqa)
        hw.remove_heads_evenly(model, head_drops)
        hw.remove_hidden(model, hidden_drops)
        summary["heads_per_layer"] = [b.units for b in fx.attention_blocks(model)]
    else:
        head_drops, ffn_drops = plan(config, scores.heads, scores.ffn, kv_groups)
        hidden_drops = plan_hidden(config, scores.hidden)
        summary = apply_plan(model, head_drops, ffn_drops, gqa)
        hw.remove_hidden(model, hidden_drops)
    summary.update(params_before=before, params_after=count_params(model), hidden_size=model.config.hidden_size,
                   removed_head_units=head_drops, removed_ffn_channels=ffn_drops, removed_hidden_channels=hidden_drops)
    return summary


# ---------------------------------------------------------------------------------------- stage


def importance_batches(config: PruneConfig, ctx: StageContext, tokenizer) -> list[dict] | None:
    """The data importance needs: padded labeled batches (taylor) or unpadded single examples."""
    if config.importance == "magnitude":
        return None
    if config.importance == "taylor":
        return list(ctx.data.batches(tokenizer, "train", batch_size=8, limit=config.samples))
    return [{k: torch.from_numpy(v) for k, v in ex.items()} for ex in ctx.data.calibration(tokenizer, config.samples)]


def run(config: PruneConfig, artifact: Artifact, ctx: StageContext) -> Artifact:
    """Prune heads and FFN channels of the input model, optionally recover, save a reloadable folder."""
    from edgeslim.compress.lowrank import is_factorized

    if is_factorized(artifact.path):
        raise EdgeslimError("prune cannot cut a low-rank factorized model; put prune before lowrank in the recipe")
    torch.manual_seed(ctx.seed)
    model, tokenizer = load_torch(artifact.path, ctx.task)
    batches = importance_batches(config, ctx, tokenizer)
    summary = prune_model(model, config, batches)
    ctx.log(f"prune: params {summary['params_before']:,} -> {summary['params_after']:,}; "
            f"heads/layer {summary['heads_per_layer']}, ffn/layer {summary['ffn_per_layer']}")
    if any(summary["padded"].values()):
        ctx.log(f"prune: layers padded with zeros to a common shape {summary['padded']} (use scope: uniform to avoid)")
    kept = {k: v for k, v in summary.items() if k not in ("removed_ffn_channels", "removed_hidden_channels")}
    vocab_map = read_vocab_map(artifact.path)
    metrics = {**kept, **recover(model, config.recovery, ctx, tokenizer, vocab_map)}
    save_torch(model, tokenizer, ctx.out_dir, vocab_map)
    check_reloads(model, Path(ctx.out_dir), ctx.task, "prune")
    return Artifact(Path(ctx.out_dir), "torch", {"metrics": metrics})
