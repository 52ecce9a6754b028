"""Relative positions: ALiBi distance bias and rotary embeddings with xPos scaling.

Both are computed once per forward by the `Decoder` and shared by every attention layer.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn


def alibi_slopes(num_alibi_heads: int, total_heads: int) -> Tensor:
    """Per-head ALiBi slopes, `(total_heads,)`: geometric for the first `num_alibi_heads`, 0 after.

    Geometric sequence 2^(-8/n), 2^(-16/n), ... (Press et al.); for a head count that is not a
    power of two, the closest lower power's slopes plus every other slope of the next power,
    exactly as the lineage computes them.
    """

    def power_of_2_slopes(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_alibi_heads).is_integer():
        slopes = power_of_2_slopes(num_alibi_heads)
    else:
        lower = 2 ** math.floor(math.log2(num_alibi_heads))
        slopes = power_of_2_slopes(lower) + power_of_2_slopes(2 * lower)[0::2][: num_alibi_heads - lower]
    return torch.tensor(slopes + [0.0] * (total_heads - num_alibi_heads), dtype=torch.float32)


class Alibi(nn.Module):
    """ALiBi: score(i, j) += -slope_h * (i - j) on the first `alibi_heads` heads (causal, so i >= j).

    `dense_bias` materialises the bias with the causal mask folded in (for SDPA / reference
    math), cached per shape so a training run builds it once; FlexAttention instead computes it
    inside the kernel from `slopes` (see `kernels.flex_attention_causal`).
    """

    def __init__(self, alibi_heads: int, total_heads: int) -> None:
        super().__init__()
        self.alibi_heads, self.total_heads = alibi_heads, total_heads
        self.register_buffer("slopes", torch.empty(total_heads), persistent=False)
        self._cache: tuple[tuple, Tensor] | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.slopes.copy_(alibi_slopes(self.alibi_heads, self.total_heads))
        self._cache = None

    def dense_bias(self, q_len: int, k_len: int, dtype: torch.dtype) -> Tensor:
        """Additive bias `(1, heads, q_len, k_len)` for the last `q_len` of `k_len` positions, with
        the causal mask folded in (-inf); zero distance term on the heads without ALiBi. 4-D so
        SDPA takes its fused kernel (a 3-D mask falls back to the unfused math path on CPU)."""
        key = (q_len, k_len, dtype, self.slopes.device)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        device = self.slopes.device
        q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
        k_pos = torch.arange(k_len, device=device)[None, :]
        distance = (q_pos - k_pos).float()  # (q_len, k_len), >= 0 where attended
        bias = -self.slopes[:, None, None] * distance
        bias = bias.masked_fill(k_pos > q_pos, float("-inf")).to(dtype)[None]
        if not torch.compiler.is_compiling():
            self._cache = (key, bias)
        return bias


class RotaryTables(NamedTuple):
    """Per-position multipliers `(n, dim_head)` so that rotary-xPos is `x·cos + pair_swap(x)·sin`.

    Rotated pairs (2i, 2i+1) get cos/sin of their angle times the xPos scale (queries s^pos,
    keys s^-pos, so q_i·k_j carries s^(i - j): only the distance matters); the sign of the
    swapped term is folded into `sin`. Unrotated dims get cos 1, sin 0. Queries' tables may also
    carry the softmax scale.
    """

    q_cos: Tensor
    q_sin: Tensor
    k_cos: Tensor
    k_sin: Tensor


class RotaryXPos(nn.Module):
    """Rotary embeddings on the first `rot_dim` of `dim_head` dims of each head, with xPos scaling.

    Pairs are interleaved (dims 2i, 2i+1 rotate together), as in the lineage. xPos scale per pair
    is (2i + 0.4·rot_dim) / (1.4·rot_dim) raised to (pos - center) / scale_base. The center is
    fixed (`max_seq_len // 2`) rather than the lineage's "middle of the current sequence": the
    attention scores are identical (only i - j matters) and cached keys stay valid as the
    sequence grows during generation.
    """

    def __init__(self, rot_dim: int, dim_head: int, use_xpos: bool, scale_base: float, center: int,
                 base: float = 10000.0) -> None:
        super().__init__()
        self.rot_dim, self.dim_head, self.use_xpos = rot_dim, dim_head, use_xpos
        self.scale_base, self.center, self.base = scale_base, center, base
        self.register_buffer("inv_freq", torch.empty(rot_dim // 2), persistent=False)
        self.register_buffer("xpos_scale", torch.empty(rot_dim // 2), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        idx = torch.arange(0, self.rot_dim, 2, dtype=torch.float32)
        with torch.no_grad():
            self.inv_freq.copy_(1.0 / self.base ** (idx / self.rot_dim))
            self.xpos_scale.copy_((idx + 0.4 * self.rot_dim) / (1.4 * self.rot_dim))

    def forward(self, offset: int, seq_len: int, q_multiplier: float = 1.0) -> RotaryTables:
        pos = torch.arange(offset, offset + seq_len, device=self.inv_freq.device, dtype=torch.float32)
        angles = pos[:, None] * self.inv_freq  # (n, rot_dim / 2)
        cos, sin = angles.cos(), angles.sin()
        scale = self.xpos_scale ** ((pos[:, None] - self.center) / self.scale_base) if self.use_xpos else 1.0
        return RotaryTables(*self._expand(cos * scale * q_multiplier, sin * scale * q_multiplier, q_multiplier),
                            *self._expand(cos / scale, sin / scale, 1.0))

    def _expand(self, cos: Tensor, sin: Tensor, unrotated: float) -> tuple[Tensor, Tensor]:
        """`(n, rot/2)` per pair -> `(n, dim_head)` per dim: [c0, c0, c1, c1, .., u..], [-s0, s0, .., 0..]."""
        n, rest = cos.shape[0], self.dim_head - self.rot_dim
        cos_full = torch.cat((cos.repeat_interleave(2, dim=-1), cos.new_full((n, rest), unrotated)), dim=-1)
        sin_full = torch.cat((torch.stack((-sin, sin), dim=-1).flatten(-2), sin.new_zeros(n, rest)), dim=-1)
        return cos_full, sin_full


def pair_swap(x: Tensor) -> Tensor:
    """(x0, x1, x2, x3, ..) -> (x1, x0, x3, x2, ..) along the last dim."""
    return x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary(-xPos) on `x` `(b, h, n, dim_head)` with tables `(n, dim_head)`: out_2i = x_2i·c - x_2i+1·s,
    out_2i+1 = x_2i+1·c + x_2i·s on rotated pairs; unrotated dims times 1 (or the q multiplier)."""
    return torch.addcmul(x * cos.to(x.dtype), pair_swap(x), sin.to(x.dtype))
