"""The non-finite guard: a NaN/Inf loss or gradient never reaches the weights.

Before each optimizer step the global gradient norm (DDP grads are all-reduced, FSDP's are DTensors, so
every rank sees the same value and takes the same decision) is logged as `train/grad_norm` (before clipping:
the norm the clip threshold is compared with) and checked.

Decided on the device, with no host-device sync per step, where the optimizer can skip a step itself: fused
Adam/AdamW (`conf/optim/adamw.yaml` sets `fused: true`) reads `optimizer.found_inf` after the closure and, where
it is 1, leaves parameters, moments and step count as they were (the mechanism `GradScaler` uses). The guard
sets it from the norm; the counts stay on the device and are read every `log_every_n_steps` steps (and at every
checkpoint, so a resume counts exactly), when Lightning reads the logged metrics anyway. Other optimizers (or a
`GradScaler` of 16-mixed, which owns `found_inf`) read the norm on every step and drop the gradients.

`mode="skip"` goes on (and stops after `max_consecutive` bad steps in a row); `mode="stop"` stops: `GracefulStop`
checkpoints, and the CLI reports `reason` as its `error:` line. From the bad step on (stop mode, or past
`max_consecutive`) every update is skipped, on both paths, so the weights that checkpoint holds are those from
before the bad step even where the stop comes later: at the next read (up to `log_every_n_steps - 1` steps), and
on several ranks one step after that (`GracefulStop` agrees without a blocking collective).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from gpt4_lightning.training.config import NONFINITE_MODES
from gpt4_lightning.training.devices import loss_scaler

log = logging.getLogger(__name__)


class NonFiniteGuard(L.Callback):
    """Skips (or stops on) optimizer steps with a non-finite loss or gradient norm.

    `bad_steps` (kept in checkpoints) counts skipped steps over the whole run; `stop_step` is the step that
    stopped it (the first bad one with `mode="stop"`), and `stop_requested` asks `GracefulStop` for a checkpoint
    and a stop."""

    def __init__(self, mode: str = "skip", max_consecutive: int = 10) -> None:
        if mode not in NONFINITE_MODES:
            raise ValueError(f"nonfinite.mode={mode!r} must be 'skip' or 'stop'")
        if max_consecutive < 0:
            raise ValueError(f"nonfinite.max_consecutive={max_consecutive} must be >= 0")
        self.mode, self.max_consecutive = mode, max_consecutive
        self.bad_steps = 0
        self.stop_step: int | None = None
        self.check_every = 1
        self.consecutive = 0  # bad steps in a row (the host path)
        self.step = 0  # the last step seen (for the log lines of a read outside a step)
        # on the device: [bad steps since the last read, bad steps in a row, the step that halted it or -1]
        self._counts: torch.Tensor | None = None

    @property
    def stop_requested(self) -> bool:
        return self.stop_step is not None

    @property
    def reason(self) -> str | None:
        if self.stop_step is None:
            return None
        return (f"non-finite loss or gradient norm at step {self.stop_step} (nonfinite.mode={self.mode}, "
                f"{self.bad_steps} bad steps in all)")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check_every = max(1, int(trainer.log_every_n_steps or 1))

    @staticmethod
    def skips_on_device(trainer: L.Trainer, optimizer: torch.optim.Optimizer) -> bool:
        """Whether `optimizer` skips a step where `found_inf` is 1 (fused Adam/AdamW) and nothing else sets it."""
        return (bool(getattr(optimizer, "_step_supports_amp_scaling", False))
                and loss_scaler(trainer) is None)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.nn.utils.get_total_norm(grads)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        pl_module.log("train/grad_norm", norm)
        self.step = trainer.global_step
        if self.skips_on_device(trainer, optimizer):
            self._count_on_device(trainer, pl_module, optimizer, norm)
        else:
            self._count_on_host(trainer, pl_module, optimizer, norm)

    def _count_on_device(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer,
                         norm: torch.Tensor) -> None:
        if self._counts is None:
            self._counts = torch.tensor([0, 0, -1], dtype=torch.long, device=norm.device)
        bad = (~torch.isfinite(norm)).long()
        since, run, halted = self._counts.unbind()
        run = (run + 1) * bad
        halt = bad if self.mode == "stop" else (run > self.max_consecutive).long()
        halted = torch.where((halted < 0) & (halt > 0), trainer.global_step, halted)
        self._counts = torch.stack([since + bad, run, halted])
        optimizer.found_inf = torch.maximum(bad, (halted >= 0).long()).float()  # read by the fused step
        if (trainer.global_step + 1) % self.check_every == 0:
            self._read_counts(pl_module)

    def _read_counts(self, pl_module: L.LightningModule | None = None) -> None:
        """The device counts to the host (one sync): `bad_steps`, the log lines, and the stop (`pl_module`:
        also log `train/nonfinite_steps`, from within a step)."""
        if self._counts is None:
            return
        since, _, halted = self._counts.tolist()
        self._counts[0] = 0
        if since:
            self.bad_steps += since
            if pl_module is not None:
                pl_module.log("train/nonfinite_steps", float(self.bad_steps))
            log.warning("non-finite loss or gradient norm: %d update(s) skipped up to step %d (%d so far)", since,
                        self.step, self.bad_steps)
        if halted >= 0 and self.stop_step is None:
            log.error("non-finite loss or gradient norm at step %d: updates skipped from there, stopping", halted)
            self.stop_step = halted

    def _count_on_host(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer,
                       norm: torch.Tensor) -> None:
        if self.stop_step is not None:  # stopping: on several ranks the stop lands a step later (GracefulStop)
            optimizer.zero_grad(set_to_none=True)
            return
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

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._read_counts()

    def state_dict(self) -> dict[str, Any]:
        self._read_counts()  # a checkpoint counts every skipped step (one sync per checkpoint)
        return {"bad_steps": self.bad_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.bad_steps = int(state_dict.get("bad_steps", 0))
