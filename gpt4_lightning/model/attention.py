"""Causal self-attention with multi-query heads, qk-norm and rotary-xPos."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import GPT4Config
from .init import init_linear_
from .kernels import AttentionBias, AttentionKernel
from .kv_cache import KVCache
from .positional import RotaryTables, apply_rotary


class QKNorm(nn.Module):
    """l2-normalise queries and keys per head, then scale (cosine-similarity attention).

    With `dim_scale`: learned per-dimension gains for q `(h, 1, d)` and k `(kv_heads, 1, d)`,
    initialised to d^0.25 each, softmax scale d^-0.5 (lineage: x-transformers). Without: a
    learned per-head temperature `(h, 1, 1)` initialised to `init_scale` (lineage: 10).
    Either way |q·k| is bounded by the learned scales, whatever the activations. The softmax
    scale is folded into the query gain, so the returned q·k are the final scores.
    """

    def __init__(self, heads: int, kv_heads: int, dim_head: int, dim_scale: bool, init_scale: float) -> None:
        super().__init__()
        self.dim_head, self.dim_scale, self.init_scale = dim_head, dim_scale, init_scale
        if dim_scale:
            self.q_scale = nn.Parameter(torch.empty(heads, 1, dim_head))
            self.k_scale = nn.Parameter(torch.empty(kv_heads, 1, dim_head))
        else:
            self.temperature = nn.Parameter(torch.empty(heads, 1, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.dim_scale:
            nn.init.constant_(self.q_scale, self.dim_head**0.25)
            nn.init.constant_(self.k_scale, self.dim_head**0.25)
        else:
            nn.init.constant_(self.temperature, self.init_scale)

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """`(b, h, n, d)`, `(b, kv_heads, n, d)` -> scaled unit vectors, same shapes."""
        d = self.dim_head
        # l2norm(x) = rms_norm(x) / sqrt(d): one fused kernel instead of norm + clamp + divide
        q, k = F.rms_norm(q, (d,), eps=1e-12), F.rms_norm(k, (d,), eps=1e-12)
        if self.dim_scale:
            return q * (self.q_scale / d), k * (self.k_scale * d**-0.5)  # q: gain / sqrt(d) * softmax scale
        return q * (self.temperature * d**-0.5), k * d**-0.5


class Attention(nn.Module):
    """`(b, n, dim) -> (b, n, dim)`. One fused q/k/v projection: `dim -> (heads + 2·kv_heads)·dim_head`;
    with `attn_one_kv_head` the k and v parts are `dim -> dim_head` each (multi-query)."""

    def __init__(self, cfg: GPT4Config, layer: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.dim_head, self.layer = cfg.heads, cfg.kv_heads, cfg.dim_head, layer
        self.depth = cfg.depth
        self.qkv_sizes = (cfg.heads * cfg.dim_head, cfg.kv_heads * cfg.dim_head, cfg.kv_heads * cfg.dim_head)
        self.to_qkv = nn.Linear(cfg.dim, (cfg.heads + 2 * cfg.kv_heads) * cfg.dim_head, bias=False)
        self.to_out = nn.Linear(cfg.heads * cfg.dim_head, cfg.dim, bias=False)
        self.qk_norm = (QKNorm(cfg.heads, cfg.kv_heads, cfg.dim_head, cfg.attn_qk_norm_dim_scale,
                               cfg.attn_qk_norm_scale) if cfg.use_qk_norm else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_linear_(self.to_qkv)
        init_linear_(self.to_out, residual_depth=self.depth)

    def forward(self, x: Tensor, rotary: RotaryTables | None, bias: AttentionBias, kernel: AttentionKernel,
                cache: KVCache | None = None) -> Tensor:
        b, n, _ = x.shape
        d = self.dim_head
        q, k, v = self.to_qkv(x).split(self.qkv_sizes, dim=-1)
        # head counts from the shapes (-1), not the config: a tensor-parallel shard holds fewer heads
        q = q.view(b, n, -1, d).transpose(1, 2)  # (b, h, n, d)
        k = k.view(b, n, -1, d).transpose(1, 2)  # (b, kvh, n, d)
        v = v.view(b, n, -1, d).transpose(1, 2)

        # the softmax scale goes into q: through qk-norm's gain, else the rotary tables, else here
        if self.qk_norm is not None:
            q, k = self.qk_norm(q, k)
        if rotary is not None:
            q = apply_rotary(q, rotary.q_cos, rotary.q_sin)
            k = apply_rotary(k, rotary.k_cos, rotary.k_sin)
        elif self.qk_norm is None:
            q = q * d**-0.5
        # qk-norm gains and rotary tables are fp32 (parameters/buffers): under autocast q and k come out fp32
        # beside a bf16 v; every kernel gets the matmuls' dtype (FlexAttention requires one dtype for all three)
        q, k = q.to(v.dtype), k.to(v.dtype)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (b, kvh, cached + n, d)

        out = kernel(q, k, v, bias)  # (b, h, n, d)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))
