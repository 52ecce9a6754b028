"""Position-wise feed-forward."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .init import init_linear_


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear with biases, `dim -> ff_mult * dim -> dim` (the lineage's default FF)."""

    def __init__(self, dim: int, mult: int, depth: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(dim, dim * mult)
        self.proj_out = nn.Linear(dim * mult, dim)
        self.depth = depth
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_linear_(self.proj_in)
        init_linear_(self.proj_out, residual_depth=self.depth)  # a residual branch's output (model/init.py)

    def forward(self, x: Tensor) -> Tensor:  # (b, n, dim) -> (b, n, dim)
        return self.proj_out(F.gelu(self.proj_in(x)))
