"""Long tiny-model runs that get interrupted (killed, signalled, a rank lost): their arguments (120 steps, a
checkpoint every 20, every step logged and flushed) and the wait until a run is past its first checkpoint."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.helpers.cli import logged_losses, train_args
from tests.helpers.wait import wait_until

STEPS, EVERY = 120, 20


def run_args(workdir: Path, name: str, *extra: str) -> list[str]:
    base = [a for a in train_args(workdir, STEPS) if not a.startswith(("run_name=", "trainer.log_every_n_steps=",
                                                                       "checkpoint.every_n_steps="))]
    return [*base, f"run_name={name}", "trainer.log_every_n_steps=1", f"checkpoint.every_n_steps={EVERY}",
            "trainer.enable_progress_bar=false", *extra]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until `path` exists, while `proc` runs."""
    wait_until(path.exists, timeout, interval_s=0.01, what=f"{path}", proc=proc)


def last_logged_step(run_dir: Path) -> int:
    """The last step in metrics.csv so far (-1 before the first flushed row; a row being written is skipped)."""
    try:
        return max((s for s, _ in logged_losses(run_dir)), default=-1)
    except (OSError, ValueError, KeyError):
        return -1


# metrics.csv flushed every step (Lightning's CSVLogger buffers 100): a killed run's progress is visible
FLUSH = "+trainer.logger.flush_logs_every_n_steps=1"


def wait_past_checkpoint(run_dir: Path, proc: subprocess.Popen) -> None:
    """Until the first periodic checkpoint exists and the run has logged 2 more steps: the kill or signal then
    lands between checkpoints, with steps since the last one that the resume must redo."""
    wait_for(run_dir / "checkpoints" / f"step{EVERY:06d}.ckpt", proc)
    wait_until(lambda: last_logged_step(run_dir) >= EVERY + 2, 300, interval_s=0.01,
               what=f"step {EVERY + 2} in metrics.csv", proc=proc)


# fsdp runs with the in-training lm-eval on (rank 0 scores the gathered weights every 40 steps): the stream and
# the resume must not notice it
DOWNSTREAM = ["eval.tasks=gpt4l_next_line", "eval.every_n_steps=40", "eval.limit=4"]
# one process trains on the warmup-stable-decay schedule, decaying from step 12 of 120: the kill and the resume
# (after step 20) land mid-decay
WSD = ["scheduler=wsd", "scheduler.decay_fraction=0.9", "scheduler.decay_shape=1-sqrt", "scheduler.min_lr_ratio=0.1"]
STRATEGIES = {"one": WSD, "fsdp": ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2",
                                  "data.batch_size=4", *DOWNSTREAM]}
