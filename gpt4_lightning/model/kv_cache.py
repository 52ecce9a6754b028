"""Pre-allocated key/value cache for generation."""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Keys (already rotated) and values of every layer, `(depth, b, kv_heads, max_len, dim_head)`.

    With one kv head (multi-query) it is `heads`× smaller than a per-head cache. Layers write
    their new positions through `update`; the decoder calls `advance` once all layers have.
    """

    def __init__(self, depth: int, batch: int, kv_heads: int, max_len: int, dim_head: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        shape = (depth, batch, kv_heads, max_len, dim_head)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store `(b, kv_heads, n, d)` at the next positions; return all keys/values so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; writing up to {end} overflows it")
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n
