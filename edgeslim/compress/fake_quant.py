"""Quantization-aware distillation: the student trains through the INT4 grid it will ship with.

``distill.quantization_aware`` puts every ``nn.Linear`` weight (and a tied embedding table) of the
student behind a fake quantizer while it trains: the forward pass sees the weights rounded to the
4-bit block grid that the ``quantize`` stage will write, the backward pass treats the rounding as the
identity (straight-through estimator), so the float weights learn to sit where rounding costs the
least. The saved student keeps its float weights; quantizing them with the matching algorithm gives
exactly the weights the student trained with.

The grids, per block of ``block_size`` weights along the input dimension (the layout of
``MatMulNBits`` and of the 4-bit embedding lookup):

* ``offset``: 16 levels from the block's minimum to its maximum (``quantize.algorithm: offset``);
* ``asymmetric``: onnxruntime's RTN with an integer zero point, the range widened to include 0
  (``algorithm: rtn``);
* ``symmetric``: onnxruntime's symmetric RTN, levels -8..7 of ``absmax / 8`` (``rtn, symmetric: true``).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

GRIDS = ("offset", "asymmetric", "symmetric")


def fake_quantize(weight: torch.Tensor, block_size: int, grid: str) -> torch.Tensor:
    """``weight`` [out, in] rounded to the 4-bit ``grid`` in blocks of ``block_size`` along ``in``."""
    out_features, in_features = weight.shape
    blocks = weight.reshape(out_features, in_features // block_size, block_size)
    low, high = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
    if grid == "offset":
        step = ((high - low) / 15.0).clamp_min(torch.finfo(weight.dtype).tiny)
        rounded = low + step * torch.clamp(torch.round((blocks - low) / step), 0, 15)
    elif grid == "asymmetric":
        low, high = low.clamp_max(0), high.clamp_min(0)
        step = ((high - low) / 15.0).clamp_min(torch.finfo(weight.dtype).tiny)
        zero = torch.clamp(torch.round(-low / step), 0, 15)
        rounded = (torch.clamp(torch.round(blocks / step) + zero, 0, 15) - zero) * step
    elif grid == "symmetric":
        extreme = torch.where(high.abs() > low.abs(), high, low)
        step = extreme / -8.0
        safe = torch.where(step == 0, torch.ones_like(step), step)
        rounded = torch.clamp(torch.round(blocks / safe), -8, 7) * step
    else:
        raise ValueError(f"unknown 4-bit grid {grid!r}; use one of {', '.join(GRIDS)}")
    return rounded.reshape(out_features, in_features)


class BlockFakeQuant(nn.Module):
    """A parametrization: the weight as the forward pass sees it, rounded with a straight-through
    gradient (the rounding's gradient is taken as the identity)."""

    def __init__(self, block_size: int, grid: str):
        super().__init__()
        self.block_size, self.grid = block_size, grid

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        rounded = fake_quantize(weight.detach(), self.block_size, self.grid)
        return weight + (rounded - weight).detach()


def quantizable(model: nn.Module, block_size: int) -> list[tuple[nn.Module, str]]:
    """(module, "weight") for every ``nn.Linear`` and ``nn.Embedding`` whose input width is a multiple
    of ``block_size``: the weights the weight-only quantize stage turns into 4-bit blocks (an
    embedding only matters when it is tied to the head, but rounding an untied one is harmless)."""
    found = []
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.in_features % block_size == 0:
            found.append((module, "weight"))
        elif isinstance(module, nn.Embedding) and module.embedding_dim % block_size == 0:
            found.append((module, "weight"))
    return found


@contextlib.contextmanager
def fake_quantized(model: nn.Module, block_size: int, grid: str) -> Iterator[int]:
    """Within the block, ``model``'s quantizable weights are seen through the ``grid``; on leaving
    it the float weights (as trained) are put back, tied weights still tied. Yields how many."""
    if grid not in GRIDS:
        raise ValueError(f"unknown 4-bit grid {grid!r}; use one of {', '.join(GRIDS)}")
    targets = quantizable(model, block_size)
    for module, name in targets:
        parametrize.register_parametrization(module, name, BlockFakeQuant(block_size, grid), unsafe=True)
    try:
        yield len(targets)
    finally:
        for module, name in targets:
            if parametrize.is_parametrized(module, name):
                parametrize.remove_parametrizations(module, name, leave_parametrized=False)
        if getattr(getattr(model, "config", None), "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
            model.tie_weights()
