"""One run per run directory: an exclusive `flock` on `<run dir>/.run.lock`, held for the run's lifetime.

Global rank 0's launching process takes it (the other ranks of the job run under it); the kernel releases it
however the process ends, `kill -9` included, so a requeued Slurm job whose predecessor is gone takes it at once
(one whose predecessor is still exiting waits up to `REQUEUE_WAIT_S` for it). The file names the holder (host,
pid, start, command) for the error line of a second run. On a filesystem without working `flock` (Lustre
mounted without `-o flock`, some NFS setups) the lock is not available: a warning says so and the run goes on.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)

LOCK = ".run.lock"
REQUEUE_WAIT_S = 120
UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class RunDirInUseError(ValueError):
    """Another live run holds the run directory (a user error: one `error:` line)."""


class RunLock:
    """`RunLock.take(run_dir)` or raise `RunDirInUseError`; `release()` (or process exit) lets it go."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path, self.fd = path, fd

    @classmethod
    def take(cls, run_dir: Path, wait_s: float = 0.0) -> RunLock:
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno in UNSUPPORTED:
                    os.close(fd)
                    log.warning("cannot lock %s (flock: %s): this filesystem does not support it, so a second run "
                                "on this directory is not prevented", path, e.strerror)
                    return cls(path, None)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = _describe(path)
                    os.close(fd)
                    raise RunDirInUseError(f"{run_dir} is in use by another run ({holder}); wait for it to end, or "
                                      "give this run another run_name (or hydra.run.dir)") from None
                time.sleep(1.0)  # a requeued job's predecessor still exiting: poll the lock
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                  "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
                  "command": " ".join([f"python -m gpt4_lightning.{Path(sys.argv[0]).stem}", *sys.argv[1:]])[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


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
