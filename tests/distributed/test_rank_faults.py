"""A rank lost (SIGKILL) or hung (SIGSTOP) in a 2-process FSDP2 run through the real CLI (gloo, subprocesses): the
run ends with one `error:` line naming what happened and how to resume, and the resume works."""

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import error_lines, run, start
from tests.helpers.interrupted import DOWNSTREAM, FLUSH, STEPS, STRATEGIES, run_args, wait_past_checkpoint


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Lightning's launcher starts ranks > 0 as children of rank 0)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_a_lost_rank_ends_the_run_in_one_line_naming_it_and_the_resume_works(workdir):
    fsdp = [a for a in STRATEGIES["fsdp"] if a not in DOWNSTREAM]
    run_dir = workdir / "outputs" / "rank_lost"
    proc = start(workdir, *run_args(workdir, "rank_lost", *fsdp, FLUSH))
    wait_past_checkpoint(run_dir, proc)
    (rank1,) = child_pids(proc.pid)
    os.kill(rank1, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    (line,) = error_lines(err)
    assert "rank 1 of 2 died (killed by SIGKILL) during step" in line, line
    last = os.path.realpath(run_dir / "checkpoints" / "last.ckpt")
    assert f"the last complete checkpoint is {last}" in line and "Traceback" not in err
    resume = shlex.split(line.split("resume: ", 1)[1])
    assert resume[:3] == ["python", "-m", "gpt4_lightning.train"]
    resumed = run(workdir, "train", *resume[3:])
    assert f"steps: {STEPS}" in resumed.stdout


@pytest.mark.slow
def test_a_hung_rank_ends_the_run_after_collective_timeout_s(workdir, tmp_path):
    """Rank 1 stopped (SIGSTOP: alive, silent): rank 0's next collective gives up after collective_timeout_s and
    the run ends with one line, instead of waiting Lightning's 30 minutes."""
    fsdp = [a for a in STRATEGIES["fsdp"] if a not in DOWNSTREAM]
    run_dir = workdir / "outputs" / "rank_hung"
    env = {**os.environ, "GPT4_LIGHTNING_CACHE": str(workdir / "cache")}
    env.pop("HYDRA_FULL_ERROR", None)
    # output to files: the stopped rank holds the pipes' write ends open, so a pipe would never reach EOF
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "gpt4_lightning.train",
                                 *run_args(workdir, "rank_hung", *fsdp, FLUSH, "parallel.collective_timeout_s=30")],
                                cwd=workdir, env=env, stdout=out, stderr=err_file, start_new_session=True)
        try:
            wait_past_checkpoint(run_dir, proc)
            (rank1,) = child_pids(proc.pid)
            os.kill(rank1, signal.SIGSTOP)
            proc.wait(timeout=300)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the stopped rank
    err = (tmp_path / "err").read_text()
    assert proc.returncode == 1, err[-3000:]
    (line,) = error_lines(err)
    assert "a peer rank was lost during step" in line and "resume: python -m gpt4_lightning.train" in line, line
    assert "Timed out" in line and "Traceback" not in err
