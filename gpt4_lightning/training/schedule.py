"""The learning-rate curve: a multiplier of the peak lr per optimizer step (plain math, no torch: the config
checks run it before anything heavy is imported)."""

from __future__ import annotations

import math
from collections.abc import Callable

DECAY_SHAPES = ("cosine", "linear", "1-sqrt")


def check_schedule(warmup_steps: int, min_lr_ratio: float, decay_shape: str) -> None:
    """The checks that need no `total_steps` (a config checks them while it is still an interpolation)."""
    if warmup_steps < 0:
        raise ValueError(f"scheduler.warmup_steps={warmup_steps} must be >= 0")
    if not 0 <= min_lr_ratio <= 1:
        raise ValueError(f"scheduler.min_lr_ratio={min_lr_ratio} must be in [0, 1]")
    if decay_shape not in DECAY_SHAPES:
        raise ValueError(f"scheduler.decay_shape={decay_shape!r} must be one of {', '.join(DECAY_SHAPES)}")


def lr_multiplier(warmup_steps: int, total_steps: int, min_lr_ratio: float, decay_fraction: float | None = None,
                  decay_shape: str = "cosine") -> Callable[[int], float]:
    """Multiplier of the peak lr at optimizer step `step`: linear from 1/warmup to 1 over `warmup_steps`,
    then 1 (stable), then down to `min_lr_ratio` over the decay steps, ending at `total_steps`; flat after.

    decay_fraction: the share of `total_steps` that decays, at the end (warmup-stable-decay); None: every step
        after the warmup (warmup-cosine, no stable phase).
    decay_shape: of the decay's progress p in [0, 1]: cosine 0.5·(1 + cos(πp)), linear 1 - p, or 1-sqrt
        1 - √p (Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training
        Durations": a 20 % 1-sqrt cooldown matches cosine; MiniCPM introduced WSD).
    """
    check_schedule(warmup_steps, min_lr_ratio, decay_shape)
    if total_steps < 1:
        raise ValueError(f"scheduler.total_steps={total_steps} must be >= 1")
    if decay_fraction is None:
        decay_steps = total_steps - warmup_steps
    else:
        decay_steps = round(decay_fraction * total_steps)
        if not 0 < decay_fraction <= 1 or decay_steps < 1 or total_steps - decay_steps < warmup_steps:
            raise ValueError(
                f"scheduler.decay_fraction={decay_fraction} must be in (0, 1] and leave the decay ({decay_steps} of "
                f"total_steps={total_steps}) at least one step, after warmup_steps={warmup_steps}")
    decay_start = total_steps - decay_steps
    shape = {"cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)), "linear": lambda p: 1 - p,
             "1-sqrt": lambda p: 1 - math.sqrt(p)}[decay_shape]

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, decay_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * shape(progress)

    return multiplier
