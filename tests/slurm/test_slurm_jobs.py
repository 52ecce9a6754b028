"""The Slurm launch path on a real one-node Slurm cluster (the `slurm` fixture, tests/slurm/conftest.py),
CPU only, tiny model: launch/slurm/train.sbatch with 2 ranks, a submitit multirun sweep, a
USR1 -> checkpoint -> requeue -> resume cycle, and launch/slurm/prepare.sbatch as a job array of parts and a
dependent merge job."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.cli import logged_losses, run, train_args
from tests.helpers.paths import REPO
from tests.helpers.wait import wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SBATCH = REPO / "launch" / "slurm" / "train.sbatch"
PREPARE_SBATCH = REPO / "launch" / "slurm" / "prepare.sbatch"
# this 2-core node: two CPU ranks, no GPUs (the script's defaults ask for 8 GPUs)
CPU_JOB = ["--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0", "--time=15"]


def job_env(workdir: Path) -> dict[str, str]:
    """What a job needs from the test: the data cache, and this interpreter (the sbatch script runs $PYTHON)."""
    return {"GPT4_LIGHTNING_CACHE": str(workdir / "cache"), "PYTHON": sys.executable,
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}


def tiny(workdir: Path, max_steps: int, *extra: str) -> list[str]:
    """The shared tiny-model arguments, without run_name (the sbatch script names the run after the job)."""
    return [a for a in train_args(workdir, max_steps) if not a.startswith("run_name=")] + list(extra)


@pytest.fixture(scope="module", autouse=True)
def prepared(slurm, workdir):
    """Prepare the corpus once, before any job: several jobs starting at once would otherwise all wait on one
    prepare's lock (and a forked tokenizer pool under submitit inherits its SIGTERM handler; see launch/README.md)."""
    run(workdir, "prepare", *(a for a in train_args(workdir, 1) if a.startswith(("data", "tokenizer"))))



def test_sbatch_script_trains_on_two_ranks(slurm, workdir):
    job = slurm.submit(*CPU_JOB, str(SBATCH), "trainer.accelerator=cpu", *tiny(workdir, 10),
                       env=job_env(workdir), cwd=workdir)
    state = slurm.wait(job, timeout=300)
    assert state == "COMPLETED", slurm.describe(job)
    log = (workdir / f"slurm-{job}.out").read_text()  # the script's --output=slurm-%j.out, in the submit dir
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log, log[-3000:]
    assert "steps: 10" in log
    run_dir = workdir / "outputs" / f"slurm-{job}"  # run_name=slurm-<job id>: stable across requeues
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 10
    assert max(s for s, _ in logged_losses(run_dir)) == 9


def sweep_command(slurm, sweep: Path, workdir: Path, max_steps: int, *extra: str) -> list[str]:
    """`python -m gpt4_lightning.train -m hydra/launcher=slurm ...` for this one-node CPU cluster."""
    launcher = ["hydra/launcher=slurm", f"hydra.sweep.dir={sweep}", f"hydra.launcher.partition={slurm.partition}",
                "hydra.launcher.tasks_per_node=1", "hydra.launcher.gpus_per_node=null",
                "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=15"]
    # the trainer follows the launcher's resources, as launch/README.md shows
    trainer = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=${hydra:launcher.tasks_per_node}",
               "trainer.num_nodes=${hydra:launcher.nodes}", "ckpt_path=auto"]
    args = [a for a in tiny(workdir, max_steps) if not a.startswith("optim.lr=")]
    return [sys.executable, "-m", "gpt4_lightning.train", "-m", *launcher, *trainer, *args, *extra]


def submitit_jobs(sweep: Path) -> list[str]:
    """The Slurm job ids submitit used (`<id>` for one job, `<array id>_<index>` for an array)."""
    return sorted(d.name for d in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+(_\d+)?", d.name)
                  and any(d.glob("*_submitted.pkl")))


def test_submitit_multirun_runs_each_sweep_point_as_a_job(slurm, workdir):
    sweep = workdir / "multirun" / "slurm_sweep"
    proc = subprocess.run(sweep_command(slurm, sweep, workdir, 10, "optim.lr=1e-3,3e-3"), cwd=workdir,
                          env={**slurm.env, **job_env(workdir)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:] + slurm.daemon_logs()
    for num, lr in enumerate(("0.001", "0.003")):
        run_dir = sweep / str(num)
        assert f"optim.lr={lr}" in (run_dir / ".hydra" / "overrides.yaml").read_text()
        assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
        assert max(s for s, _ in logged_losses(run_dir)) == 9
    # two Slurm jobs (one array), both finished
    tasks = submitit_jobs(sweep)
    assert len(tasks) == 2 and len({t.split("_")[0] for t in tasks}) == 1, tasks
    # submitit returns once each job has written its result; Slurm may still be ending the job
    assert [slurm.wait(t, timeout=60) for t in tasks] == ["COMPLETED", "COMPLETED"]


def test_submitit_requeued_sweep_point_resumes_from_its_checkpoint(slurm, workdir):
    """submitit's own preemption/time-limit path: Slurm sends USR2 (submitit's --signal), submitit requeues the
    job and exits; the requeued job runs the same sweep point in the same directory, and ckpt_path=auto resumes
    it from its newest periodic checkpoint. The submitting command waits through it all."""
    sweep, max_steps = workdir / "multirun" / "slurm_requeue", 300
    cmd = sweep_command(slurm, sweep, workdir, max_steps, "checkpoint.every_n_steps=10",
                        "trainer.limit_val_batches=0")
    with subprocess.Popen(cmd, cwd=workdir, env={**slurm.env, **job_env(workdir)}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        try:
            first = sweep / "0" / "checkpoints" / "step000010.ckpt"
            wait_until(lambda: first.exists() and submitit_jobs(sweep), 180, interval_s=0.3, what=f"{first}",
                       proc=proc)
            (job,) = submitit_jobs(sweep)
            slurm.scancel("--signal=USR2", job)
            slurm.wait_for(job, lambda info: info["Restarts"] == "1" and info["JobState"] == "PENDING", 120,
                           "submitit to requeue the job")
            slurm.release(job)
            state = slurm.wait(job, timeout=300)
            assert state == "COMPLETED", slurm.describe(job)
            out, _ = proc.communicate(timeout=120)  # submitit sees the job's result file
        finally:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    log = "".join(p.read_text() for p in sorted((sweep / ".submitit" / job).glob("*_log.*")))
    assert "this job is preempted" in log and f"Requeued job {job}" in log
    resumed = re.search(r"resuming from \S+step(\d+)\.ckpt \(step (\d+)\)", log)
    assert resumed and int(resumed.group(2)) >= 10, log[-4000:]
    assert f"steps: {max_steps}" in log
    assert torch.load(sweep / "0" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == max_steps


def test_usr1_checkpoints_requeues_and_resumes_without_losing_a_step(slurm, workdir):
    """What a time limit (`--signal=USR1@120`) or preemption does: USR1 reaches the srun tasks; the ranks
    checkpoint after the current step, rank 0 requeues the job and exits 0; the requeued job (same id,
    same run directory) resumes with ckpt_path=auto and ends at max_steps with every step done once."""
    max_steps = 300
    args = tiny(workdir, max_steps, "trainer.log_every_n_steps=1", "trainer.limit_val_batches=0",
                "checkpoint.every_n_steps=10")
    job = slurm.submit(*CPU_JOB, str(SBATCH), "trainer.accelerator=cpu", *args, env=job_env(workdir), cwd=workdir)
    run_dir = workdir / "outputs" / f"slurm-{job}"
    first = run_dir / "checkpoints" / "step000010.ckpt"
    slurm.wait_for(job, lambda info: first.exists(), timeout=180, what=f"{first.name} (training under way)")

    slurm.scancel("--signal=USR1", str(job))  # to the job steps' tasks, as Slurm's --signal=USR1@<s> does
    pending = slurm.wait_for(job, lambda info: info["Restarts"] == "1" and info["JobState"] == "PENDING",
                             timeout=120, what="the job to requeue itself")
    assert pending["Reason"] == "BeginTime"  # Slurm holds a requeued job back for a while...
    slurm.release(job)                         # ...start it now
    assert slurm.wait(job, timeout=300) == "COMPLETED", slurm.describe(job)

    log = (workdir / f"slurm-{job}.out").read_text()  # --open-mode=append: both runs
    stopped = re.search(r"SIGUSR1 received: checkpointing at step (\d+)", log)
    assert stopped, log[-4000:]
    step = int(stopped.group(1))
    assert 10 <= step < max_steps
    assert f"job {job} (restart 0)" in log and f"job {job} (restart 1)" in log
    assert re.search(rf"resuming from \S+step{step:06d}\.ckpt \(step {step}\)", log), log[-4000:]
    assert "Restoring states from the checkpoint path at" in log
    assert f"steps: {max_steps}" in log
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == max_steps
    # every optimizer step exactly once across the two runs, as in an uninterrupted run: the first run
    # checkpointed after step `step` (logged steps 0..step-1), the resumed one logged step..max_steps-1,
    # appended to the same metrics.csv (gpt4_lightning.training.loggers.ResumableCSVLogger)
    steps = [s for s, _ in logged_losses(run_dir)]
    assert steps == list(range(max_steps)), (step, steps[:5], len(steps))


def test_prepare_job_array_then_dependent_merge_job_equals_one_part_prepare(slurm, workdir, tmp_path):
    from gpt4_lightning.config import compose_config
    from gpt4_lightning.data.prepare.pipeline import prepare
    from tests.helpers.prepare import documents

    corpus = tmp_path / "corpus"  # the shared corpus in 3 files: parts are ranges of files
    corpus.mkdir()
    lines = (workdir / "corpus.jsonl").read_text().splitlines(keepends=True)
    for k in range(3):
        (corpus / f"{k}.jsonl").write_text("".join(lines[k::3]))
    data = ["data=files", f"data.path={corpus}", "tokenizer.vocab_size=512", "data.shard_tokens=20000"]
    args = [*data, f"data.dir={tmp_path / 'parted'}", "num_parts=2"]
    job = [str(PREPARE_SBATCH), *args]
    array = slurm.submit("--array=0-1", "--cpus-per-task=1", "--time=10", *job, env=job_env(workdir), cwd=tmp_path)
    merge = slurm.submit(f"--dependency=afterok:{array}", "--cpus-per-task=1", "--time=10", *job,
                         env=job_env(workdir), cwd=tmp_path)
    assert slurm.wait(merge, timeout=300) == "COMPLETED", slurm.describe(merge) + slurm.describe(f"{array}_0")
    for k in range(2):
        task = slurm.job(f"{array}_{k}")
        assert task["JobState"] == "COMPLETED", slurm.describe(f"{array}_{k}", task)
        assert f"prepared {tmp_path / 'parted' / 'parts'}/part-0000{k}-of-00002" in slurm.stdout(None, task)
    log = slurm.stdout(merge)
    assert "merged 2 parts" in log and "prepared " not in log, log[-3000:]
    whole = prepare(compose_config("prepare", [*data, f"data.dir={tmp_path / 'whole'}"]))
    for split in ("train", "val"):
        assert documents(tmp_path / "parted", split) == documents(whole, split), split


def test_a_bad_sweep_point_submits_no_slurm_job(slurm, workdir):
    """The sweep is checked whole in the submitting process: one bad point, no job reaches Slurm."""
    def job_ids() -> set[str]:
        return set(re.findall(r"JobId=(\d+)", slurm.scontrol("show", "jobs", check=False).stdout))

    sweep = workdir / "multirun" / "slurm_bad_point"
    before = job_ids()
    proc = subprocess.run(sweep_command(slurm, sweep, workdir, 10, "optim.lr=1e-3,-1"), cwd=workdir,
                          env={**slurm.env, **job_env(workdir)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: #1 (") and "optim.lr=-1" in lines[0], proc.stderr
    assert not sweep.exists() and job_ids() == before
