"""The non-finite guard: a NaN/Inf loss or gradient never reaches the weights.

Before each optimizer step the global gradient norm (DDP grads are all-reduced, FSDP's are DTensors, so
every rank sees the same value and takes the same decision) is logged as `train/grad_norm` (before clipping:
the norm the clip threshold is compared with) and checked. A non-finite norm drops the gradients, so the
optimizer skips every parameter: no update, no change to its moments. `mode="skip"` goes on (and stops
after `max_consecutive` bad steps in a row); `mode="stop"` stops at once: `GracefulStop` checkpoints the
weights from before the bad step, and the CLI reports `reason` as its `error:` line.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from .config import NONFINITE_MODES

log = logging.getLogger(__name__)


class NonFiniteGuard(L.Callback):
    """Skips (or stops on) optimizer steps with a non-finite loss or gradient norm.

    `bad_steps` (kept in checkpoints) counts skipped steps over the whole run; `stop_step` is the step it
    stopped at, and `stop_requested` asks `GracefulStop` for a checkpoint and a stop."""

    def __init__(self, mode: str = "skip", max_consecutive: int = 10) -> None:
        if mode not in NONFINITE_MODES:
            raise ValueError(f"nonfinite={mode!r} must be 'skip' or 'stop'")
        if max_consecutive < 0:
            raise ValueError(f"nonfinite_max_consecutive={max_consecutive} must be >= 0")
        self.mode, self.max_consecutive = mode, max_consecutive
        self.bad_steps = 0
        self.consecutive = 0
        self.stop_step: int | None = None

    @property
    def stop_requested(self) -> bool:
        return self.stop_step is not None

    @property
    def reason(self) -> str | None:
        if self.stop_step is None:
            return None
        return (f"non-finite loss or gradient norm at step {self.stop_step} (nonfinite={self.mode}, "
                f"{self.bad_steps} bad steps in all)")

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.nn.utils.get_total_norm(grads)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        pl_module.log("train/grad_norm", norm)
        if bool(torch.isfinite(norm)):  # one device sync per step: the decision comes before the update
            self.consecutive = 0
            return
        optimizer.zero_grad(set_to_none=True)
        self.bad_steps += 1
        self.consecutive += 1
        pl_module.log("train/nonfinite_steps", float(self.bad_steps))
        step = trainer.global_step
        if self.mode == "stop" or self.consecutive > self.max_consecutive:
            log.error("non-finite loss or gradient norm at step %d: update skipped, stopping", step)
            self.stop_step = step
        else:
            log.warning("non-finite loss or gradient norm at step %d: update skipped (%d so far)", step,
                        self.bad_steps)

    def state_dict(self) -> dict[str, Any]:
        return {"bad_steps": self.bad_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.bad_steps = int(state_dict.get("bad_steps", 0))
