"""Position-wise feed-forward."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear with biases, `dim -> ff_mult * dim -> dim` (the lineage's default FF)."""

    def __init__(self, dim: int, mult: int, depth: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(dim, dim * mult)
        self.proj_out = nn.Linear(dim * mult, dim)
        self.depth = depth
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.proj_in.weight, std=0.02)
        # residual-branch output: scaled down with depth (GPT-2) so the stream's variance stays ~1
        nn.init.normal_(self.proj_out.weight, std=0.02 / math.sqrt(2 * self.depth))
        nn.init.zeros_(self.proj_in.bias)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor) -> Tensor:  # (b, n, dim) -> (b, n, dim)
        return self.proj_out(F.gelu(self.proj_in(x)))
