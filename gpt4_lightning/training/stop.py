"""A graceful stop on a signal: finish this optimizer step, checkpoint, stop.

The signal handler only records the signal; at the end of each step the ranks agree (all-reduce of max) so
that all of them stop after the same step, however the signal reached them. The flag is a host tensor reduced
over gloo (a CPU group beside NCCL on GPUs), so agreeing costs a host round-trip but never waits for the
device; one process reads its flag without any collective. Under Slurm, rank 0 then
requeues the job on SIGUSR1 (Slurm's `--signal=USR1@…` before the time limit or a preemption), and the
requeued job resumes with `ckpt_path=auto`. Another callback can ask for the same checkpoint-and-stop
through a true `stop_requested` attribute (the non-finite guard does).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

from ..checkpoint.atomic import AtomicCheckpoint
from .steps import OptimizerSteps

log = logging.getLogger(__name__)


class GracefulStop(L.Callback):
    """SIGTERM or SIGUSR1: checkpoint at the end of the current optimizer step and stop training.

    `stop_signal` (a name, e.g. "SIGTERM") tells the caller why training ended early; `requeue()`
    resubmits a Slurm job; `checkpoint` is the checkpoint written on the way out."""

    def __init__(self, signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")) -> None:
        self.signals = tuple(signal.Signals[name] for name in signals)
        self.received: int = 0
        self.stop_signal: str | None = None
        self.checkpoint: Path | None = None
        self._previous: dict[int, Any] = {}
        self._steps = OptimizerSteps()
        self._group: Any = None  # the process group the flag is reduced over (gloo); None: one process

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum  # nothing else is safe in a signal handler

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning's own handlers are in place (its SIGTERM handler would stop without a checkpoint)
        self._steps.start(trainer)
        self._previous = {s: signal.signal(s, self._handle) for s in self.signals}
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1 and self._group is None:
            if dist.get_backend() == "gloo":
                self._group = dist.group.WORLD
            else:  # every rank makes it here, in the same order: a collective
                timeout = getattr(trainer.strategy, "_timeout", None)  # collective_timeout_s (training.build)
                self._group = dist.new_group(backend="gloo", **({"timeout": timeout} if timeout else {}))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._steps.stepped(trainer):
            return
        requested = any(getattr(c, "stop_requested", False) for c in trainer.callbacks)
        signum = self.received
        if self._group is not None:
            wanted = torch.tensor([signum, int(requested)])  # host memory: no device sync
            dist.all_reduce(wanted, op=dist.ReduceOp.MAX, group=self._group)  # every rank stops after this step
            signum, requested = (int(v) for v in wanted.tolist())
        if not (signum or requested):
            return
        if signum:
            self.stop_signal = signal.Signals(signum).name
            log.warning("%s received: checkpointing at step %d and stopping", self.stop_signal, trainer.global_step)
        saver = next(c for c in trainer.callbacks if isinstance(c, AtomicCheckpoint))
        self.checkpoint = saver.save(trainer)
        trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def requeue(self) -> bool:
        """Under Slurm after SIGUSR1 (the job's time is nearly up or it is being preempted): put the job
        back in the queue; the new run resumes with `ckpt_path=auto`. Call on global rank 0 only."""
        job_id = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
        if self.stop_signal != "SIGUSR1" or not job_id:
            return False
        if os.environ.get("SLURM_ARRAY_TASK_ID"):
            job_id = f"{job_id}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
        if result.returncode != 0:
            log.error("scontrol requeue %s failed: %s", job_id, result.stderr.strip())
            return False
        log.warning("Slurm job %s requeued; it resumes from %s", job_id, self.checkpoint)
        return True
