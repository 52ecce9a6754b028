"""AdamW parameter groups and the learning-rate schedule (warmup, then cosine; or warmup-stable-decay)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gpt4_lightning.model.embedding import AbsolutePositionalEmbedding, TokenEmbedding
from gpt4_lightning.training.schedule import lr_multiplier

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


def lr_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1,
                 decay_fraction: float | None = None, decay_shape: str = "cosine") -> torch.optim.lr_scheduler.LambdaLR:
    """`LambdaLR` over `lr_multiplier` (stepped every optimizer step); Hydra builds it with `_partial_`. Its state
    is the step count alone, so a resumed run may change the schedule's keys (e.g. decay a stable-phase
    checkpoint: a new `trainer.max_steps` and `scheduler.decay_fraction`)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(warmup_steps, total_steps, min_lr_ratio, decay_fraction, decay_shape))
