"""Pre-norm decoder blocks and the decoder stack that shares positions across them."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import Attention
from .config import GPT4Config
from .feedforward import FeedForward
from .kernels import KERNELS, REFERENCE, SDPA, AttentionBias, AttentionKernel
from .kv_cache import KVCache
from .norms import LayerNorm
from .positional import Alibi, RotaryTables, RotaryXPos


def compute_dtype(device: torch.device, default: torch.dtype) -> torch.dtype:
    """The dtype matmuls run in on `device`: autocast's when it is on, else `default`."""
    if torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return default


class DecoderBlock(nn.Module):
    """x + attn(norm(x)), then x + ff(norm(x)). The unit that parallelism wraps (FSDP, AC, compile)."""

    def __init__(self, cfg: GPT4Config, layer: int) -> None:
        super().__init__()
        self.attn_norm = LayerNorm(cfg.dim)
        self.attn = Attention(cfg, layer)
        self.ff_norm = LayerNorm(cfg.dim)
        self.ff = FeedForward(cfg.dim, cfg.ff_mult, cfg.depth)

    def forward(self, x: Tensor, rotary: RotaryTables | None, bias: AttentionBias, kernel: AttentionKernel,
                cache: KVCache | None = None) -> Tensor:  # (b, n, dim) -> (b, n, dim)
        x = x + self.attn(self.attn_norm(x), rotary, bias, kernel, cache)
        return x + self.ff(self.ff_norm(x))


class Decoder(nn.Module):
    """`depth` blocks and a final norm. Rotary tables and the attention bias are built here once
    per forward and handed to every block."""

    def __init__(self, cfg: GPT4Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(DecoderBlock(cfg, i) for i in range(cfg.depth))
        self.rotary = (RotaryXPos(cfg.rotary_dim, cfg.dim_head, use_xpos=True, scale_base=cfg.rotary_xpos_scale_base,
                                  center=cfg.max_seq_len // 2) if cfg.rotary_xpos else None)
        # without qk-norm the queries' softmax scale rides on the rotary tables (one pass fewer)
        self.rotary_q_multiplier = 1.0 if cfg.use_qk_norm else cfg.dim_head**-0.5
        self.alibi = Alibi(cfg.alibi_num_heads, cfg.heads) if cfg.alibi_pos_bias else None
        self.norm = LayerNorm(cfg.dim)
        self.kernel: AttentionKernel | None = None  # set_kernel: one kernel for every forward

    def set_kernel(self, kernel: AttentionKernel | None) -> None:
        """Use `kernel` for every forward (None: choose per device, `kernel_for`), e.g. the memory planner's
        stand-in for a kernel it cannot run."""
        self.kernel = kernel

    def kernel_for(self, device: torch.device, q_len: int, k_len: int) -> AttentionKernel:
        """reference math without `attn_flash`; else FlexAttention on CUDA (or when asked),
        SDPA otherwise. Cached decoding (q_len != k_len) uses SDPA where the kernel cannot."""
        if self.kernel is not None:
            return self.kernel
        if not self.cfg.attn_flash:
            return REFERENCE
        backend = self.cfg.attn_backend
        if backend == "auto":
            backend = "flex" if device.type == "cuda" else "sdpa"
        kernel = KERNELS[backend]
        return kernel if kernel.cached or q_len == k_len else SDPA

    def attention_bias(self, kernel: AttentionKernel, q_len: int, k_len: int, device: torch.device,
                       dtype: torch.dtype, documents: Tensor | None = None) -> AttentionBias:
        alibi = self.alibi
        return kernel.bias(alibi.dense_bias if alibi is not None else None,
                           alibi.slopes if alibi is not None else None, q_len, k_len, device, dtype, documents)

    def forward(self, x: Tensor, cache: KVCache | None = None, documents: Tensor | None = None) -> Tensor:
        """`(b, n, dim) -> (b, n, dim)`. `documents` `(b, n)`: each position's document id (document masking:
        attention stays within a document). Positions are not restarted per document: ALiBi and rotary-xPos
        depend on i - j alone, so a document's scores are the same wherever it starts in the window."""
        n = x.shape[1]
        offset = cache.length if cache is not None else 0
        dtype = compute_dtype(x.device, x.dtype)
        kernel = self.kernel_for(x.device, n, offset + n)
        bias = self.attention_bias(kernel, n, offset + n, x.device, dtype, documents)
        rotary = self.rotary(offset, n, self.rotary_q_multiplier) if self.rotary is not None else None
        for block in self.blocks:
            x = block(x, rotary, bias, kernel, cache)
        if cache is not None:
            cache.advance(n)
        return self.norm(x)
