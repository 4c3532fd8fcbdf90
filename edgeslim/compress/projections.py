"""A model's projections as prune cuts and pads them: an ``nn.Linear`` (weight out x in),
transformers' ``Conv1D`` (GPT-2: weight in x out) or a :class:`RowView` of a fused projection (Phi-3's
``qkv_proj`` and ``gate_up_proj``). Each cut removes whole output or input channels (torch-pruning's
pruners for Linears); each pad appends exact zeros, which add nothing to the outputs.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn


def is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"


def out_dim(module: nn.Module) -> int:
    """The weight dimension that indexes the projection's outputs."""
    return 1 if is_conv1d(module) else 0


def in_dim(module: nn.Module) -> int:
    return 0 if is_conv1d(module) else 1


def in_width(module: nn.Module) -> int:
    return module.weight.shape[in_dim(module)]


def out_width(module: nn.Module) -> int:
    return module.weight.shape[out_dim(module)]


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


def pad_outputs(linear: nn.Module, extra: int) -> None:
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


def pad_inputs(linear: nn.Module, extra: int) -> None:
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
