"""A graceful stop on a signal: finish this optimizer step (with several ranks also the next), checkpoint, stop.

The signal handler only records the signal; the ranks agree (all-reduce of max) so that all of them stop after
the same step, however the signal reached them. The flags are a host tensor reduced over a gloo group of their
own (beside NCCL on GPUs), so agreeing never waits for the device, and the reduction is non-blocking: a step's
flags go out at its end and are read at the end of the next step, long arrived, so no step waits for the
slowest rank's round-trip (a ring over 512 ranks is ~1000 hops). A stop thus comes one optimizer step after
the signal, on every rank the same; one process reads its flag at once. Under Slurm, rank 0 then
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

from gpt4_lightning.checkpoint.atomic import AtomicCheckpoint
from gpt4_lightning.training.steps import OptimizerSteps

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
        self._pending: tuple[Any, torch.Tensor] | None = None  # the last step's reduction in flight

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum  # nothing else is safe in a signal handler

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning's own handlers are in place (its SIGTERM handler would stop without a checkpoint)
        self._steps.start(trainer)
        self._previous = {s: signal.signal(s, self._handle) for s in self.signals}
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1 and self._group is None:
            # every rank makes it here, in the same order: a collective. Its own group, also over gloo, so
            # that the reduction in flight never interleaves with the strategy's collectives
            timeout = getattr(trainer.strategy, "_timeout", None)  # parallel.collective_timeout_s (run.build)
            self._group = dist.new_group(backend="gloo", **({"timeout": timeout} if timeout else {}))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._steps.stepped(trainer):
            return
        requested = any(getattr(c, "stop_requested", False) for c in trainer.callbacks)
        signum = self.received
        if self._group is not None:
            signum, requested = self.agree(signum, int(requested))
        if not (signum or requested):
            return
        if signum:
            self.stop_signal = signal.Signals(signum).name
            log.warning("%s received: checkpointing at step %d and stopping", self.stop_signal, trainer.global_step)
        saver = next(c for c in trainer.callbacks if isinstance(c, AtomicCheckpoint))
        self.checkpoint = saver.save(trainer)
        trainer.should_stop = True

    def agree(self, signum: int, requested: int) -> tuple[int, int]:
        """This step's flags out, the previous step's back (max over ranks; `(0, 0)` at the first step).

        Every rank calls it once per optimizer step, so the k-th reduction is step k's on all of them; a rank
        waits only for the reduction sent a step ago. After a stop (every rank decides it from the same values)
        nothing more is sent."""
        agreed = (0, 0)
        if self._pending is not None:
            work, flags = self._pending
            work.wait()
            agreed = tuple(int(v) for v in flags.tolist())
            self._pending = None
        if not any(agreed):
            flags = torch.tensor([signum, requested])  # host memory: no device sync
            self._pending = (dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self._group, async_op=True), flags)
        return agreed

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:  # the last step's reduction: every rank sent it, so it completes
            self._pending[0].wait()
            self._pending = None
        self._restore()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._pending = None  # after an error a peer may be gone: never wait for it
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
