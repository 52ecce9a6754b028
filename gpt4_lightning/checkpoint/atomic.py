"""Atomic checkpoints: a kill at any moment leaves `last.ckpt` pointing at a complete checkpoint.

`AtomicCheckpoint` writes each checkpoint (a file, or a torch.distributed.checkpoint directory under
FSDP) under a hidden temporary name, and only when every rank has finished does rank 0 fsync it and
rename it to `stepNNNNNN.ckpt`, then repoint the `last.ckpt` symlink with an atomic rename. A kill at
any moment therefore leaves `last.ckpt` pointing at a complete checkpoint; a half-written one is a
`.tmp-*` entry, removed at the next start.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L

from gpt4_lightning.checkpoint.background import BackgroundSave, stage_to_host
from gpt4_lightning.checkpoint.integrity import SIDECAR_SUFFIX, manifest_path
from gpt4_lightning.checkpoint.paths import LAST, STEP_NAME, TEMPORARY_PREFIX, step_name
from gpt4_lightning.utils.files import fsync_dir, fsync_tree, remove

log = logging.getLogger(__name__)


class CheckpointSpaceError(OSError):
    """A checkpoint could not be written for lack of disk space (or quota): what was lost and what to do."""


def _size(path: Path) -> int:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(f.stat().st_size for f in files)


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"


class AtomicCheckpoint(L.Callback):
    """Checkpoints every `every_n_train_steps` optimizer steps and at the end of training, as
    `dirpath/stepNNNNNN.ckpt` with `dirpath/last.ckpt` a symlink to the newest. `keep_last_k` keeps that
    many step checkpoints (None: all) besides every `keep_every`-th step's; the one `last.ckpt` points at is never
    deleted. Each checkpoint's manifest of checksums (`integrity`) is written with it and published before it."""

    def __init__(self, dirpath: str | Path, every_n_train_steps: int = 100, keep_last_k: int | None = None,
                 keep_every: int | None = None, async_save: bool = False) -> None:
        if keep_last_k is not None and keep_last_k < 1:
            raise ValueError(f"checkpoint.keep_last={keep_last_k} must be >= 1 or null (keep all)")
        self.dirpath = Path(dirpath)
        self.every_n_train_steps, self.keep_last_k, self.keep_every = every_n_train_steps, keep_last_k, keep_every
        self.last_saved_step: int | None = None
        self.async_save = async_save
        self._in_flight: tuple[BackgroundSave, int, Path] | None = None

    @property
    def last_path(self) -> Path:
        return self.dirpath / LAST

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            for stale in self.dirpath.glob(TEMPORARY_PREFIX + "*"):  # a save interrupted by a kill
                log.warning("removing incomplete checkpoint %s (a save was interrupted)", stale)
                remove(stale)
        trainer.strategy.barrier("AtomicCheckpoint.setup")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_train_steps == 0 and step != self.last_saved_step:
            self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self.last_saved_step:
            self.save(trainer)
        self.wait(trainer)  # the end of the run (and a graceful stop) waits for the save in flight

    def save(self, trainer: L.Trainer) -> Path:
        """Write the trainer's full state at this step; every rank calls it. With `async_save`, the state is
        staged in host memory and written in the background: the checkpoint is published (renamed, `last.ckpt`
        moved, old ones pruned) once it is complete on every rank, and the next save waits for it."""
        self.wait(trainer)  # at most one save in flight
        step = trainer.global_step
        final = self.dirpath / step_name(step)
        tmp = self.dirpath / f"{TEMPORARY_PREFIX}{final.name}"
        if trainer.is_global_zero:
            remove(tmp)
        trainer.strategy.barrier("AtomicCheckpoint.before_save")
        self.last_saved_step = step  # part of the state being written
        if self.async_save:
            self._start_in_background(trainer, tmp, final)
            return final
        with self._space_checked(trainer, step, tmp):
            # all ranks write (sharded) or rank 0 (plain), then a barrier; the full state (optimizer, loops) to resume
            trainer.save_checkpoint(tmp, weights_only=False)
            if trainer.is_global_zero:
                fsync_tree(tmp)
        if trainer.is_global_zero:
            self._publish(tmp, final)
        trainer.strategy.barrier("AtomicCheckpoint.after_save")
        return final

    def _start_in_background(self, trainer: L.Trainer, tmp: Path, final: Path) -> None:
        """Stage the state, then write and publish it in a thread: DCP's `async_save` on a gloo group of its own
        (sharded), or the `.ckpt` by rank 0 through the trainer's checkpoint IO."""
        from gpt4_lightning.checkpoint.io import VerifiedModelParallelStrategy

        # what Trainer.save_checkpoint would write; Lightning has no public call that returns it without writing
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        strategy, zero = trainer.strategy, trainer.is_global_zero
        if isinstance(strategy, VerifiedModelParallelStrategy) and strategy._save_distributed_checkpoint:
            write = strategy.start_async_save(checkpoint, tmp)
        elif zero:
            staged, io = stage_to_host(checkpoint), strategy.checkpoint_io
            def write() -> None:
                io.save_checkpoint(staged, tmp)
        else:
            def write() -> None:
                pass

        def work() -> None:
            write()
            if zero:
                fsync_tree(tmp)
                self._publish(tmp, final)

        self._in_flight = (BackgroundSave(work, name=f"checkpoint {final.name}"), trainer.global_step, tmp)

    def wait(self, trainer: L.Trainer) -> None:
        """Until the save in flight (if any) is published; the seconds waited logged as `checkpoint/wait_s`."""
        if self._in_flight is None:
            return
        save, step, tmp = self._in_flight
        self._in_flight = None
        with self._space_checked(trainer, step, tmp):
            waited = save.wait()
        trainer.strategy.barrier("AtomicCheckpoint.wait")
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({"checkpoint/wait_s": waited}, step=trainer.global_step)

    @contextlib.contextmanager
    def _space_checked(self, trainer: L.Trainer, step: int, tmp: Path) -> Iterator[None]:
        """A full disk or quota while writing `tmp`: the partial checkpoint removed at once (it holds the space the
        next save needs) and a `CheckpointSpaceError` saying what was lost."""
        try:
            yield
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            with contextlib.suppress(OSError):
                remove(tmp)
            raise CheckpointSpaceError(e.errno, self._space_message(step, trainer, e)) from e

    def _publish(self, tmp: Path, final: Path) -> None:
        """Rename the complete checkpoint `tmp` (and a file's manifest beside it: first, so that a published
        file always has its own) to `final`, replacing the same step saved before (e.g. resumed at the end); then
        point `last.ckpt` at it and prune (rank 0)."""
        if tmp.is_file():
            os.replace(manifest_path(tmp), manifest_path(final))
        if final.exists() or final.is_symlink():
            trash = self.dirpath / f"{TEMPORARY_PREFIX}old-{final.name}"
            os.replace(final, trash)
            os.replace(tmp, final)
            remove(trash)
        else:
            os.replace(tmp, final)
        link = self.dirpath / f"{TEMPORARY_PREFIX}{LAST}"
        remove(link)
        os.symlink(final.name, link)
        os.replace(link, self.last_path)  # atomic: last.ckpt is never missing nor partial
        fsync_dir(self.dirpath)
        self._rotate(keep=final)
        log.info("checkpoint saved: %s", final)

    def _space_message(self, step: int, trainer: L.Trainer, e: OSError) -> str:
        """Which checkpoint was lost, the last complete one, what one takes, and the ways out."""
        last = self.last_path.resolve() if self.last_path.exists() else None
        if last is not None:
            size = _size(last)
            kept = f"the last complete checkpoint is {last} ({_mib(size)})"
        else:  # the first save: weights and AdamW's two states
            size = 3 * sum(p.numel() * p.element_size() for p in trainer.lightning_module.parameters())
            kept = f"no checkpoint of this run was complete yet (one takes about {_mib(size)})"
        free = shutil.disk_usage(self.dirpath).free
        reason = "disk quota exceeded" if e.errno == errno.EDQUOT else "no space left on the device"
        return (f"step {step}'s checkpoint was not written: {reason} of {self.dirpath} ({_mib(free)} free, the "
                f"partial one removed); {kept}; free space, keep fewer checkpoints (checkpoint.keep_last=2), or "
                "write the run elsewhere (hydra.run.dir on a larger disk)")

    def _rotate(self, keep: Path) -> None:
        """After `keep` is published: all but the newest `keep_last_k` step checkpoints go, except every
        `keep_every`-th step's and `keep` itself (the newest, verified as it was written)."""
        if self.keep_last_k is None:
            return
        steps = sorted((int(m.group(1)), p) for p in self.dirpath.iterdir() if (m := STEP_NAME.match(p.name)))
        for step, path in steps[: -self.keep_last_k]:
            if path != keep and not (self.keep_every and step % self.keep_every == 0):
                remove(path)  # a directory's manifest is inside it; a file's sidecar goes below
        for sidecar in self.dirpath.glob("*" + SIDECAR_SUFFIX):  # of a file pruned, removed by hand, or not published
            if not sidecar.with_name(sidecar.name.removesuffix(SIDECAR_SUFFIX)).exists():
                remove(sidecar)

    def state_dict(self) -> dict[str, Any]:
        return {"last_saved_step": self.last_saved_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_saved_step = state_dict.get("last_saved_step")
