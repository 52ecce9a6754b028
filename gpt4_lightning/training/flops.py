"""Training FLOPs of a GPT4 step, for TFLOP/s and MFU."""

from __future__ import annotations

from torch import nn

from gpt4_lightning.model import GPT4Config


def matmul_params(model: nn.Module) -> int:
    """Parameters that multiply activations: every `nn.Linear` weight, the logits head included
    (embedding lookups, norms and qk-norm gains cost no matmul FLOPs)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def flops_per_token(cfg: GPT4Config, n_matmul_params: int, seq_len: int) -> float:
    """Forward + backward FLOPs per trained token (PaLM appendix B):

        6·N  +  12·depth·heads·dim_head·seq_len

    6·N: each matmul weight costs 2 FLOPs per token forward and 4 backward. The attention term
    is q·kᵀ and attn·v (2·2·heads·dim_head·seq_len forward per token, times 3 with backward) at the
    real sequence length, counted over the full n×n square as PaLM and torchtitan do (a causal
    kernel skips about half of it, so MFU is comparable across frameworks, not a kernel count).
    """
    return 6 * n_matmul_params + 12 * cfg.depth * cfg.heads * cfg.dim_head * seq_len
