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
    """cos/sin tables `(n, rot_dim // 2)` with the xPos scale folded in: queries use s^pos,
    keys s^-pos, so q_i·k_j carries s^(i - j) and depends only on the distance."""

    q_cos: Tensor
    q_sin: Tensor
    k_cos: Tensor
    k_sin: Tensor


class RotaryXPos(nn.Module):
    """Rotary embeddings on the first `rot_dim` dims of each head, with optional xPos scaling.

    Pairs are interleaved (dims 2i, 2i+1 rotate together), as in the lineage. xPos scale per pair
    is (2i + 0.4·rot_dim) / (1.4·rot_dim) raised to (pos - center) / scale_base. The center is
    fixed (`max_seq_len // 2`) rather than the lineage's "middle of the current sequence": the
    attention scores are identical (only i - j matters) and cached keys stay valid as the
    sequence grows during generation.
    """

    def __init__(self, rot_dim: int, use_xpos: bool, scale_base: float, center: int, base: float = 10000.0):
        super().__init__()
        self.rot_dim, self.use_xpos, self.scale_base, self.center, self.base = (
            rot_dim, use_xpos, scale_base, center, base)
        self.register_buffer("inv_freq", torch.empty(rot_dim // 2), persistent=False)
        self.register_buffer("xpos_scale", torch.empty(rot_dim // 2), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        idx = torch.arange(0, self.rot_dim, 2, dtype=torch.float32)
        with torch.no_grad():
            self.inv_freq.copy_(1.0 / self.base ** (idx / self.rot_dim))
            self.xpos_scale.copy_((idx + 0.4 * self.rot_dim) / (1.4 * self.rot_dim))

    def forward(self, offset: int, seq_len: int) -> RotaryTables:
        pos = torch.arange(offset, offset + seq_len, device=self.inv_freq.device, dtype=torch.float32)
        angles = pos[:, None] * self.inv_freq  # (n, rot_dim / 2)
        cos, sin = angles.cos(), angles.sin()
        if not self.use_xpos:
            return RotaryTables(cos, sin, cos, sin)
        scale = self.xpos_scale ** ((pos[:, None] - self.center) / self.scale_base)
        return RotaryTables(cos * scale, sin * scale, cos / scale, sin / scale)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs of the first `2 * cos.shape[-1]` dims of `x` `(b, h, n, d)`."""
    rot = 2 * cos.shape[-1]
    x_rot, x_pass = x[..., :rot].float(), x[..., rot:]
    x1, x2 = x_rot[..., 0::2], x_rot[..., 1::2]  # (b, h, n, rot / 2)
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return torch.cat((rotated.to(x.dtype), x_pass), dim=-1)
