"""AdamW parameter groups and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..model.embedding import AbsolutePositionalEmbedding, TokenEmbedding

DECAYED_MODULES = (nn.Linear, TokenEmbedding, AbsolutePositionalEmbedding)


def weight_decay_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Two AdamW groups: the first takes the optimizer's weight_decay, the second none.

    The rule: a parameter decays iff it is the `weight` matrix of a layer that
    multiplies activations by it — `nn.Linear` weights and the embedding tables. Everything else
    (LayerNorm gains, biases, qk-norm gains and temperatures) is a scale or offset that weight
    decay would pull toward 0 instead of toward its neutral value, so it does not decay."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            (decay if isinstance(module, DECAYED_MODULES) and name == "weight" else no_decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(warmup_steps: int, total_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    """Multiplier of the peak lr at optimizer step `step`: linear from 1/warmup to 1 over
    `warmup_steps`, then cosine down to `min_lr_ratio` at `total_steps`, flat after."""
    if warmup_steps < 0 or total_steps < 1 or not 0 <= min_lr_ratio <= 1:
        raise ValueError(f"scheduler needs warmup_steps >= 0, total_steps >= 1 and min_lr_ratio in [0, 1], got "
                         f"{warmup_steps}, {total_steps}, {min_lr_ratio}")

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


def warmup_cosine_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                            min_lr_ratio: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """`LambdaLR` over `warmup_cosine` (stepped every optimizer step); Hydra builds it with `_partial_`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps, total_steps, min_lr_ratio))
