"""Token and learned absolute position embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .init import init_embedding_


class TokenEmbedding(nn.Module):
    """Token id -> vector. `(b, n)` int64 -> `(b, n, dim)`."""

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_tokens, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_embedding_(self.weight)  # std 1 / sqrt(dim): model/init.py

    def forward(self, tokens: Tensor) -> Tensor:
        return F.embedding(tokens, self.weight)


class AbsolutePositionalEmbedding(nn.Module):
    """Learned position table added to token embeddings (`use_abs_pos_emb`).

    Scaled by `dim ** -0.5` as in the lineage, so it starts small next to the token embedding.
    It cannot extrapolate: positions must be `< max_seq_len`.
    """

    def __init__(self, dim: int, max_seq_len: int) -> None:
        super().__init__()
        self.scale = dim**-0.5
        self.weight = nn.Parameter(torch.empty(max_seq_len, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=1.0)

    def forward(self, offset: int, seq_len: int) -> Tensor:  # -> (seq_len, dim)
        return self.weight[offset : offset + seq_len] * self.scale
