"""The tiny GPT4 the in-process tests build, and a perturbation that moves its gains and biases off their init."""

import torch

# A tiny GPT4 with every seed flag at its default (ALiBi on half the heads, rotary-xPos, MQA, qk-norm).
TINY = dict(num_tokens=256, max_seq_len=128, dim=64, depth=2, dim_head=16, heads=4, alibi_num_heads=2)


def perturb_(model: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Move gains, biases and qk dim-scales off their init so parity tests exercise them (the qk-norm
    temperature stays at 10: x-transformers holds it fixed)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(key in name for key in ("gamma", "scale", "bias")):
                p.add_(torch.randn_like(p) * std)
    return model
