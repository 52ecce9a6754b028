"""Causal attention kernels. All take queries already multiplied by the softmax scale.

Shapes: q `(b, h, q_len, d)`, k and v `(b, kv_heads, k_len, d)` with kv_heads 1 or h; the
last `q_len` positions of `k_len` attend (right-aligned causal mask, as with a KV cache).

Three paths, numerically equal (tests): `reference_attention` (plain matmul + softmax),
`sdpa_attention` (PyTorch fused SDPA with a cached additive bias), `flex_attention_causal`
(FlexAttention: causal block mask and ALiBi `score_mod` computed inside the kernel, nothing
n×n in memory; compiled on CUDA). Each is wrapped in an `AttentionKernel` that says which bias it
takes, so the decoder builds the right one without knowing the kernels by name.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class AttentionBias(NamedTuple):
    """What a kernel needs to know about positions, built once per forward by the decoder.

    dense: additive bias `(1, h or 1, q_len, k_len)` with the causal mask folded in (-inf); with document
        masking `(b, h or 1, q_len, k_len)`, -inf also between documents. None means plain causal attention
        (q_len == k_len), for SDPA's `is_causal` fast path.
    slopes: ALiBi slopes `(h,)` (0 for heads without ALiBi), for the FlexAttention path.
    block_mask: FlexAttention's block mask for this batch (document masking: causal within each document);
        None: the cached causal one.
    """

    dense: Tensor | None
    slopes: Tensor | None
    block_mask: Any = None


def document_ids(tokens: Tensor, eos_id: int) -> Tensor:
    """`(b, n)` token ids -> `(b, n)` int32 document index within each window: windows are EOS-separated
    documents, and an EOS opens the document after it (it plays BOS: the first token of a document is
    predicted from the EOS alone, as generation after an EOS does)."""
    return (tokens == eos_id).cumsum(dim=1, dtype=torch.int32)


def document_bias(documents: Tensor, dtype: torch.dtype) -> Tensor:
    """`(b, n)` document ids -> `(b, 1, n, n)` additive bias: 0 within a document, -inf across."""
    same = documents[:, None, :, None] == documents[:, None, None, :]
    return torch.zeros(same.shape, device=documents.device, dtype=dtype).masked_fill(~same, float("-inf"))


@functools.cache
def block_mask_builder(compiled: bool) -> Callable[..., Any]:
    """torch's `create_block_mask`, compiled or not. Eager it materialises the whole `(b, 1, n, n)` mask and the ids
    gathered to it (b 1, n 8192 on CPU: +640 MiB peak and 11x the time: bench/document_mask.py); compiled it fuses
    into the blocks' bitmap, and a new batch's ids (a new closure over a same-shaped tensor) reuse the graph."""
    from torch.nn.attention.flex_attention import create_block_mask

    return torch.compile(create_block_mask) if compiled else create_block_mask


def document_block_mask(documents: Tensor, compiled: bool | None = None) -> Any:
    """FlexAttention block mask of causal attention within each document of each window `(b, n)`: built per
    batch from the ids. `compiled` (default: on CUDA, where FlexAttention runs; CPU tests run it eagerly): with
    O(b·n) memory plus the blocks' bitmap, nothing n×n."""
    def causal_in_document(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (documents[b, q_idx] == documents[b, kv_idx])

    b, n = documents.shape
    build = block_mask_builder(documents.device.type == "cuda" if compiled is None else compiled)
    return build(causal_in_document, B=b, H=None, Q_LEN=n, KV_LEN=n, device=documents.device)


def causal_bias(q_len: int, k_len: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """`(1, 1, q_len, k_len)` additive mask: 0 where position j <= i (right-aligned), -inf after."""
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    mask = torch.zeros(q_len, k_len, device=device, dtype=dtype).masked_fill(k_pos > q_pos, float("-inf"))
    return mask[None, None]


def reference_attention(q: Tensor, k: Tensor, v: Tensor, bias: AttentionBias) -> Tensor:
    """softmax(q·kᵀ + bias)·v written out; the `attn_flash=False` path and the ground truth."""
    assert bias.dense is not None, "the reference path takes the causal mask as a dense bias"
    scores = q @ k.transpose(-1, -2)  # (b, h, q_len, k_len); one kv head broadcasts over h
    return (scores.float() + bias.dense).softmax(dim=-1).to(v.dtype) @ v


# Query chunk of the masked SDPA path; see `sdpa_attention`.
CAUSAL_CHUNK = 256


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, bias: AttentionBias) -> Tensor:
    """`F.scaled_dot_product_attention`: `is_causal` without a bias, else the 4-D additive bias.

    With a bias the kernel cannot know the mask is causal and computes every key block; so for
    long sequences each chunk of `CAUSAL_CHUNK` queries attends only to the keys up to its end
    (~1/4 less attention work at n=512 — measured in BENCHMARKS.md).
    """
    if k.shape[1] != q.shape[1]:  # one kv head: a view; faster than `enable_gqa` with a mask on CPU
        k, v = k.expand(-1, q.shape[1], -1, -1), v.expand(-1, q.shape[1], -1, -1)
    sdpa = functools.partial(F.scaled_dot_product_attention, scale=1.0)
    if bias.dense is None:
        return sdpa(q, k, v, is_causal=True)
    n, kv_len = q.shape[-2], k.shape[-2]
    if n != kv_len or n <= CAUSAL_CHUNK:
        return sdpa(q, k, v, attn_mask=bias.dense)
    chunks = []
    for start in range(0, n, CAUSAL_CHUNK):
        end = min(start + CAUSAL_CHUNK, n)
        mask = bias.dense[..., start:end, :end]
        chunks.append(sdpa(q[:, :, start:end], k[:, :, :end], v[:, :, :end], attn_mask=mask))
    return torch.cat(chunks, dim=2)


@functools.lru_cache(maxsize=8)
def _causal_block_mask(seq_len: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    return create_block_mask(causal, B=None, H=None, Q_LEN=seq_len, KV_LEN=seq_len, device=device)


@functools.cache
def _flex_kernel(device_type: str):
    from torch.nn.attention.flex_attention import flex_attention

    # FlexAttention is only fast compiled; CPU tests run it eagerly (forward only there).
    return torch.compile(flex_attention, dynamic=False) if device_type == "cuda" else flex_attention


def flex_attention_causal(q: Tensor, k: Tensor, v: Tensor, bias: AttentionBias) -> Tensor:
    """FlexAttention with the causal mask as a block mask and ALiBi as a `score_mod` (q_len == k_len)."""
    slopes = bias.slopes
    score_mod = None
    if slopes is not None:
        def score_mod(score, b, h, q_idx, kv_idx):
            return score - slopes[h] * (q_idx - kv_idx)

    block_mask = bias.block_mask if bias.block_mask is not None else _causal_block_mask(q.shape[-2], str(q.device))
    return _flex_kernel(q.device.type)(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=1.0,
                                       enable_gqa=k.shape[1] != q.shape[1])


@dataclass(frozen=True)
class AttentionKernel:
    """A causal attention kernel and the bias it takes.

    dense_alibi: ALiBi as a dense additive bias (with the causal mask folded in); else the slopes go to
        the kernel, which computes the bias itself.
    dense_mask: the causal mask as a dense bias even without ALiBi; else the kernel masks (SDPA's
        `is_causal`, Flex's block mask) whenever q_len == k_len.
    cached: takes q_len != k_len (KV-cache decoding); the decoder falls back to SDPA for kernels that do not.
    """

    name: str
    fn: Callable[[Tensor, Tensor, Tensor, AttentionBias], Tensor]
    dense_alibi: bool
    dense_mask: bool
    cached: bool = True

    def bias(self, alibi_dense: Callable[[int, int, torch.dtype], Tensor] | None, slopes: Tensor | None,
             q_len: int, k_len: int, device: torch.device, dtype: torch.dtype,
             documents: Tensor | None = None) -> AttentionBias:
        """The bias for `q_len` queries over `k_len` keys: `alibi_dense(q_len, k_len, dtype)` builds (or returns
        the cached) dense ALiBi + causal bias, `slopes` are the ALiBi slopes; both None without ALiBi.
        `documents` `(b, q_len)` (q_len == k_len): mask attention across documents too."""
        if documents is not None:
            if self.dense_mask or self.dense_alibi:  # the per-batch mask joins the dense bias
                dense = (alibi_dense(q_len, k_len, dtype) if alibi_dense is not None
                         else causal_bias(q_len, k_len, device, dtype))
                return AttentionBias(dense + document_bias(documents, dtype), slopes)
            return AttentionBias(None, slopes, document_block_mask(documents))
        if alibi_dense is not None and self.dense_alibi:
            return AttentionBias(alibi_dense(q_len, k_len, dtype), None)
        if self.dense_mask or q_len != k_len:
            return AttentionBias(causal_bias(q_len, k_len, device, dtype), slopes)
        return AttentionBias(None, slopes)

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, bias: AttentionBias) -> Tensor:
        return self.fn(q, k, v, bias)


REFERENCE = AttentionKernel("reference", reference_attention, dense_alibi=True, dense_mask=True)
SDPA = AttentionKernel("sdpa", sdpa_attention, dense_alibi=True, dense_mask=False)
FLEX = AttentionKernel("flex", flex_attention_causal, dense_alibi=False, dense_mask=False, cached=False)
KERNELS = {kernel.name: kernel for kernel in (REFERENCE, SDPA, FLEX)}
