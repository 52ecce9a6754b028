"""One run per run directory: an exclusive lock (`utils.locks`, flock) on `<run dir>/.run.lock`, held for the run's
lifetime.

Global rank 0's launching process takes it (the other ranks of the job run under it); the kernel releases it
however the process ends, `kill -9` included, so a requeued Slurm job whose predecessor is gone takes it at once
(one whose predecessor is still exiting waits up to `REQUEUE_WAIT_S` for it). The file names the holder (host,
pid, start, command) for the error line of a second run. On a filesystem without working `flock` (Lustre
mounted without `-o flock`, some NFS setups) the lock is not available: a warning says so and the run goes on.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock

from gpt4_lightning.utils.locks import UNSUPPORTED, Timeout, exclusive_lock

log = logging.getLogger(__name__)

LOCK = ".run.lock"
REQUEUE_WAIT_S = 120


class RunDirInUseError(ValueError):
    """Another live run holds the run directory (a user error: one `error:` line)."""


class RunLock:
    """`RunLock.take(run_dir)` or raise `RunDirInUseError`; `release()` (or process exit) lets it go."""

    def __init__(self, path: Path, lock: FileLock | None) -> None:
        self.path, self.lock = path, lock

    @classmethod
    def take(cls, run_dir: Path, wait_s: float = 0.0) -> RunLock:
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK
        lock = exclusive_lock(path, timeout_s=wait_s, on_acquired=_record_holder)
        try:
            lock.acquire()  # a requeued job's predecessor still exiting: polled until wait_s
        except Timeout:
            raise RunDirInUseError(f"{run_dir} is in use by another run ({_describe(path)}); wait for it to end, or "
                                   "give this run another run_name (or hydra.run.dir)") from None
        except OSError as e:
            if e.errno not in UNSUPPORTED:
                raise
            log.warning("cannot lock %s (flock: %s): this filesystem does not support it, so a second run on this "
                        "directory is not prevented", path, e.strerror)
            return cls(path, None)
        return cls(path, lock)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()  # drops the flock
            self.lock = None


def _record_holder(fd: int) -> None:
    """The lock file names its holder, for the error line of a second run."""
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
              "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
              "command": " ".join([f"python -m gpt4_lightning.{Path(sys.argv[0]).stem}", *sys.argv[1:]])[:500]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)


def _describe(path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return "its holder did not record itself yet"
    job = f", Slurm job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{job}, started {holder.get('started')}"


def requeue_wait_s() -> float:
    """How long to wait for the lock: a requeued Slurm job's predecessor may still be exiting."""
    return REQUEUE_WAIT_S if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0 else 0.0
