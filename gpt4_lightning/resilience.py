"""What keeps a run's work safe: atomic checkpoints and a graceful stop on a signal.

`AtomicCheckpoint` writes each checkpoint (a file, or a torch.distributed.checkpoint directory under
FSDP) under a hidden temporary name, and only when every rank has finished does rank 0 fsync it and
rename it to `stepNNNNNN.ckpt`, then repoint the `last.ckpt` symlink with an atomic rename. A kill at
any moment therefore leaves `last.ckpt` pointing at a complete checkpoint; a half-written one is a
`.tmp-*` entry, removed at the next start.

`GracefulStop` turns SIGTERM / SIGUSR1 into "finish this optimizer step, checkpoint, stop": the signal
handler only records the signal; at the end of each step the ranks agree (all-reduce of max) so that
all of them stop after the same step, however the signal reached them. Under Slurm, rank 0 then
requeues the job on SIGUSR1 (Slurm's `--signal=USR1@…` before the time limit or a preemption), and
the requeued job resumes with `ckpt_path=auto`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

LAST = "last.ckpt"
STEP_NAME = re.compile(r"^step(\d+)\.ckpt$")


def step_of(path: str | Path) -> int | None:
    """The global step in a checkpoint's name (`stepNNNNNN.ckpt`, through the `last.ckpt` link)."""
    found = STEP_NAME.match(Path(os.path.realpath(path)).name)
    return int(found.group(1)) if found else None


def _fsync_tree(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(path if path.is_dir() else path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


class AtomicCheckpoint(L.Callback):
    """Checkpoints every `every_n_train_steps` optimizer steps and at the end of training, as
    `dirpath/stepNNNNNN.ckpt` with `dirpath/last.ckpt` a symlink to the newest. `keep_last_k` keeps that
    many step checkpoints (None: all); the one `last.ckpt` points at is never deleted."""

    def __init__(self, dirpath: str | Path, every_n_train_steps: int = 100, keep_last_k: int | None = None) -> None:
        if keep_last_k is not None and keep_last_k < 1:
            raise ValueError(f"keep_last_checkpoints={keep_last_k} must be >= 1 or null (keep all)")
        self.dirpath = Path(dirpath)
        self.every_n_train_steps, self.keep_last_k = every_n_train_steps, keep_last_k
        self.last_saved_step: int | None = None

    @property
    def last_path(self) -> Path:
        return self.dirpath / LAST

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            for stale in self.dirpath.glob(".tmp-*"):  # a save interrupted by a kill
                log.warning("removing incomplete checkpoint %s (a save was interrupted)", stale)
                _remove(stale)
        trainer.strategy.barrier("AtomicCheckpoint.setup")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_train_steps == 0 and step != self.last_saved_step:
            self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self.last_saved_step:
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> Path:
        """Write the trainer's full state at this step; every rank calls it."""
        step = trainer.global_step
        final = self.dirpath / f"step{step:06d}.ckpt"
        tmp = self.dirpath / f".tmp-{final.name}"
        if trainer.is_global_zero:
            _remove(tmp)
        trainer.strategy.barrier("AtomicCheckpoint.before_save")
        self.last_saved_step = step  # part of the state being written
        trainer.save_checkpoint(tmp)  # all ranks write (sharded) or rank 0 (plain), then a barrier
        if trainer.is_global_zero:
            _fsync_tree(tmp)
            if final.exists() or final.is_symlink():  # the same step saved again (e.g. resumed at the end)
                trash = self.dirpath / f".tmp-old-{final.name}"
                os.replace(final, trash)
                os.replace(tmp, final)
                _remove(trash)
            else:
                os.replace(tmp, final)
            link = self.dirpath / f".tmp-{LAST}"
            _remove(link)
            os.symlink(final.name, link)
            os.replace(link, self.last_path)  # atomic: last.ckpt is never missing nor partial
            _fsync_dir(self.dirpath)
            self._rotate(keep=final)
            log.info("checkpoint saved: %s", final)
        trainer.strategy.barrier("AtomicCheckpoint.after_save")
        return final

    def _rotate(self, keep: Path) -> None:
        if self.keep_last_k is None:
            return
        steps = sorted((int(m.group(1)), p) for p in self.dirpath.iterdir() if (m := STEP_NAME.match(p.name)))
        for _, path in steps[: -self.keep_last_k]:
            if path != keep:
                _remove(path)

    def state_dict(self) -> dict[str, Any]:
        return {"last_saved_step": self.last_saved_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_saved_step = state_dict.get("last_saved_step")


class GracefulStop(L.Callback):
    """SIGTERM or SIGUSR1: checkpoint at the end of the current optimizer step and stop training.

    `stop_signal` (a name, e.g. "SIGTERM") tells the caller why training ended early; `requeue()`
    resubmits a Slurm job. A model can also ask for a checkpoint-and-stop through a true
    `stop_requested` (the non-finite loss guard does)."""

    def __init__(self, signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")) -> None:
        self.signals = tuple(signal.Signals[name] for name in signals)
        self.received: int = 0
        self.stop_signal: str | None = None
        self.checkpoint: Path | None = None
        self._previous: dict[int, Any] = {}
        self._last_step = -1

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum  # nothing else is safe in a signal handler

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning's own handlers are in place (its SIGTERM handler would stop without a checkpoint)
        self._last_step = trainer.global_step
        self._previous = {s: signal.signal(s, self._handle) for s in self.signals}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step == self._last_step:  # accumulating: no optimizer step yet
            return
        self._last_step = trainer.global_step
        wanted = torch.tensor([self.received, int(getattr(pl_module, "stop_requested", False))],
                              device=pl_module.device)
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            dist.all_reduce(wanted, op=dist.ReduceOp.MAX)  # every rank stops after the same step
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
