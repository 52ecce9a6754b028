"""The learning-rate schedules written out from their definitions, independently of gpt4_lightning.training.schedule:
what the schedule tests and the resume tests compare the stepped lr with."""

import math


def wsd_definition(step: int, warmup: int, total: int, fraction: float, shape: str, floor: float) -> float:
    """Warmup-stable-decay written out from its definition, independently of training.schedule."""
    decay_start = total - round(fraction * total)
    if step < warmup:
        return (step + 1) / warmup
    if step < decay_start:
        return 1.0
    p = min(1.0, (step - decay_start) / (total - decay_start))
    shaped = {"linear": 1 - p, "cosine": (1 + math.cos(math.pi * p)) / 2, "1-sqrt": 1 - p**0.5}[shape]
    return floor + (1 - floor) * shaped
