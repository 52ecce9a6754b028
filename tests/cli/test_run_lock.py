"""One run per run directory (cli/run_lock.py): a lock held for the run's lifetime, refused to a second run with one
`error:` line (its Hydra files untouched), freed by any exit, SIGKILL included. Real CLI runs in subprocesses."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers.cli import logged_losses, run, start, train_args
from tests.helpers.wait import wait_until


def wait_for_holder(lock: Path, proc: subprocess.Popen) -> dict:
    """Until `proc` has written its record into the run lock (it holds the lock from then on)."""
    def holder() -> dict | None:
        try:
            record = json.loads(lock.read_text())
        except (OSError, ValueError):
            return None
        return record if record.get("pid") == proc.pid else None

    return wait_until(holder, 120, interval_s=0.01, what=f"pid {proc.pid}'s record in {lock}", proc=proc)


@pytest.mark.slow
def test_one_run_per_directory_and_a_killed_holder_frees_it(workdir):
    args = [*train_args(workdir, 60), "run_name=locked", "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false"]
    run_dir = workdir / "outputs" / "locked"
    first = start(workdir, *args)
    holder = wait_for_holder(run_dir / ".run.lock", first)
    step20 = run_dir / "checkpoints" / "step000020.ckpt"
    wait_until(step20.exists, 120, interval_s=0.01, what=f"{step20}", proc=first)  # training: Hydra's files are written
    hydra_files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (run_dir / ".hydra").iterdir()}

    second = run(workdir, "train", *args, check=False)
    assert second.returncode == 1, second.stderr[-3000:]
    lines = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"is in use by another run (pid {holder['pid']} on {holder['host']}" in lines[0]
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (run_dir / ".hydra").iterdir()} == hydra_files

    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    steps = [s for s, _ in logged_losses(run_dir)]
    assert steps == sorted(set(steps)) and steps[-1] == 59  # every step logged once

    killed = start(workdir, *args, "trainer.max_steps=100000", "ckpt_path=last")
    wait_for_holder(run_dir / ".run.lock", killed)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    again = run(workdir, "train", *args, "trainer.max_steps=62", "ckpt_path=last")
    assert "steps: 62" in again.stdout
