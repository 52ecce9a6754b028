"""Kills, signals and interrupted saves never cost more than the steps since the last checkpoint: exact resume
after SIGKILL (1 process, data=mix, 2-process FSDP2), graceful SIGTERM/SIGUSR1, atomic checkpoints and their
rotation, a full disk. Real CLI runs in subprocesses, compared step by step."""

import os
import signal
import textwrap
from pathlib import Path

import pytest
import torch

from gpt4_lightning.checkpoint.integrity import verify
from gpt4_lightning.checkpoint.load import read_checkpoint
from tests.helpers.cli import error_lines, run, start, step_losses, step_metric
from tests.helpers.interrupted import (
    EVERY,
    FLUSH,
    STEPS,
    STRATEGIES,
    last_logged_step,
    run_args,
    wait_for,
    wait_past_checkpoint,
)
from tests.helpers.wait import wait_until

EVAL_METRIC = "eval/gpt4l_next_line/acc"
ASYNC = "checkpoint.async_save=true"


def resume_step(run_dir: Path) -> int:
    return read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"]  # a file, or a sharded dir's meta.pt


def assert_same_from(resumed: dict[int, float], reference: dict[int, float], first: int) -> None:
    compared = [s for s in reference if s >= first]
    assert compared and max(compared) == STEPS - 1
    mismatched = [(s, resumed.get(s), reference[s]) for s in compared if resumed.get(s) != reference[s]]
    assert not mismatched, mismatched[:5]  # exact equality: bitwise-identical losses


@pytest.mark.slow
@pytest.mark.parametrize("strategy", [*STRATEGIES, "mix"])
def test_sigkill_then_resume_is_bitwise_identical(workdir, strategy, request):
    """"one" and "fsdp" are killed while saving in the background (`checkpoint.async_save`) and compared with
    uninterrupted runs that save synchronously; "mix": one process on data=mix (two sources, 0.75/0.25), saving
    synchronously, whose stream must resume as exactly."""
    on_mix = request.getfixturevalue("mix_args") if strategy == "mix" else list
    extra = STRATEGIES.get(strategy, [])
    run(workdir, "train", *on_mix(run_args(workdir, f"whole_{strategy}", *extra)))
    reference = step_losses(workdir / "outputs" / f"whole_{strategy}")
    if strategy == "one":  # the lr Lightning stepped, at every step, is the schedule's definition
        from tests.helpers.schedules import wsd_definition

        lrs = step_metric(workdir / "outputs" / "whole_one", "train/lr")
        assert sorted(lrs) == list(range(STEPS))
        assert lrs == pytest.approx({s: 3e-3 * wsd_definition(s, 5, STEPS, 0.9, "1-sqrt", 0.1) for s in lrs})

    run_dir = workdir / "outputs" / f"killed_{strategy}"
    if strategy in STRATEGIES:  # the killed run saves in the background: its losses must still be the sync run's
        extra = [*extra, ASYNC]
    proc = start(workdir, *on_mix(run_args(workdir, f"killed_{strategy}", *extra, FLUSH)))
    wait_past_checkpoint(run_dir, proc)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # every rank, no chance to clean up
    proc.wait()
    first = resume_step(run_dir)
    assert first >= EVERY and first < STEPS

    resumed = run(workdir, "train", *on_mix(run_args(workdir, f"killed_{strategy}", *extra, "ckpt_path=last")))
    assert f"steps: {STEPS}" in resumed.stdout
    assert_same_from(step_losses(run_dir), reference, first)
    if strategy == "fsdp":  # the evals ran, before and after the kill, and scored the same weights the same
        evals, resumed_evals = (step_metric(d, EVAL_METRIC) for d in (workdir / "outputs" / "whole_fsdp", run_dir))
        assert len(evals) == STEPS // 40, evals
        assert {s: v for s, v in resumed_evals.items() if s >= first} == {s: v for s, v in evals.items() if s >= first}


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "signum"), [("one", signal.SIGTERM), ("fsdp", signal.SIGUSR1)])
def test_signal_checkpoints_after_the_step_exits_zero_and_resumes_exactly(workdir, strategy, signum):
    extra = STRATEGIES[strategy]
    reference_dir = workdir / "outputs" / f"whole_{strategy}"
    if not reference_dir.exists():
        run(workdir, "train", *run_args(workdir, f"whole_{strategy}", *extra))
    reference = step_losses(reference_dir)

    name = f"stopped_{strategy}"
    run_dir = workdir / "outputs" / name
    proc = start(workdir, *run_args(workdir, name, *extra, FLUSH))
    wait_past_checkpoint(run_dir, proc)
    assert proc.poll() is None, "the run ended before the signal"
    os.kill(proc.pid, signum)  # the launching process only (rank 0): the other rank learns it at the step's end
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    stopped = resume_step(run_dir)
    assert f"stopped by {signal.Signals(signum).name} at step {stopped}" in out, out
    assert "ckpt_path=last" in out  # how to resume
    assert EVERY <= stopped < STEPS
    assert os.path.realpath(run_dir / "checkpoints" / "last.ckpt").endswith(f"step{stopped:06d}.ckpt")

    run(workdir, "train", *run_args(workdir, name, *extra, "ckpt_path=last"))
    assert_same_from(step_losses(run_dir), reference, stopped)


def patched_save(prelude: str, at_step_40: str) -> str:
    """A `python -m gpt4_lightning.train` stand-in whose save of step 40 writes part of the file, then runs
    `at_step_40` (a kill while writing, a full disk); `prelude` runs first (it may take arguments off argv)."""
    return f"""
import errno, os, runpy, sys, time
from pathlib import Path
from gpt4_lightning.checkpoint.io import VerifiedCheckpointIO

{prelude}
save = VerifiedCheckpointIO.save_checkpoint

def patched(self, checkpoint, path, storage_options=None):
    if ".tmp-step000040" in str(path):
        with open(path, "wb") as f:
            f.write(b"PK partial checkpoint")
{textwrap.indent(at_step_40, " " * 8)}
    return save(self, checkpoint, path, storage_options)

VerifiedCheckpointIO.save_checkpoint = patched
sys.argv[0] = "train"
runpy.run_module("gpt4_lightning.train", run_name="__main__", alter_sys=True)
"""


SLOW_SAVE = patched_save("marker = Path(sys.argv.pop(1))", "marker.touch()\ntime.sleep(600)  # killed while 'writing'")
FULL_DISK = patched_save("", "raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))")
LATE_THEN_KILLED = """
import os, runpy, sys, time
from pathlib import Path
from gpt4_lightning.checkpoint.io import VerifiedCheckpointIO

marker20, release, marker40 = (Path(sys.argv.pop(1)) for _ in range(3))
save = VerifiedCheckpointIO.save_checkpoint

def patched(self, checkpoint, path, storage_options=None):
    if ".tmp-step000020" in str(path):  # a slow disk: written once the test says training has gone on
        marker20.touch()
        while not release.exists():
            time.sleep(0.01)
    if ".tmp-step000040" in str(path):
        with open(path, "wb") as f:
            f.write(b"PK partial checkpoint")
        marker40.touch()
        time.sleep(600)  # killed while 'writing'
    return save(self, checkpoint, path, storage_options)

VerifiedCheckpointIO.save_checkpoint = patched
sys.argv[0] = "train"
runpy.run_module("gpt4_lightning.train", run_name="__main__", alter_sys=True)
"""
HELD_SAVE = patched_save(textwrap.dedent("""
    marker, release, waiting = (Path(sys.argv.pop(1)) for _ in range(3))
    from gpt4_lightning.checkpoint.background import BackgroundSave
    wait = BackgroundSave.wait

    def wait_noted(self):  # the training thread waits for a save still being written: say so
        if not self.done():
            waiting.touch()
        return wait(self)

    BackgroundSave.wait = wait_noted
    """),
                         "marker.touch()\nwhile not release.exists():  # a slow disk, until the test lets it finish\n"
                         "    time.sleep(0.01)")


@pytest.mark.slow
def test_kill_during_a_save_leaves_last_usable(workdir, tmp_path):
    script = tmp_path / "slow_save.py"
    script.write_text(SLOW_SAVE)
    marker = tmp_path / "saving"
    name = "kill_mid_save"
    run_dir = workdir / "outputs" / name
    proc = start(workdir, *run_args(workdir, name), script=[str(script), str(marker)])
    wait_for(marker, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    ckpts = run_dir / "checkpoints"
    assert (ckpts / ".tmp-step000040.ckpt").exists()  # the interrupted save, never visible as a checkpoint
    assert not (ckpts / "step000040.ckpt").exists()
    assert os.path.realpath(ckpts / "last.ckpt").endswith("step000020.ckpt")
    sample = run(workdir, "generate", f"ckpt_path={ckpts / 'last.ckpt'}", "max_new_tokens=4", "prompt=def")
    assert "(step 20)" in sample.stdout

    run(workdir, "train", *run_args(workdir, name, "trainer.max_steps=50", "ckpt_path=last"))
    assert not (ckpts / ".tmp-step000040.ckpt").exists()  # cleaned up by the next run
    assert torch.load(ckpts / "step000040.ckpt", weights_only=True)["global_step"] == 40
    assert os.path.realpath(ckpts / "last.ckpt").endswith("step000050.ckpt")


@pytest.mark.slow
def test_a_background_save_holds_its_steps_state_and_a_kill_during_one_keeps_the_previous(workdir, tmp_path):
    """checkpoint.async_save: step 20's write is held until training has logged step 22 (the weights and AdamW
    moments have moved on: only the staged copy is step 20's), step 40's is killed half-written. last is step
    20, and the resume to the end logs the uninterrupted sync run's losses."""
    script = tmp_path / "late_save.py"
    script.write_text(LATE_THEN_KILLED)
    marker20, release, marker40 = tmp_path / "saving20", tmp_path / "release", tmp_path / "saving40"
    name = "kill_mid_background_save"
    run_dir = workdir / "outputs" / name
    extra = [*STRATEGIES["one"], ASYNC]
    proc = start(workdir, *run_args(workdir, name, *extra, FLUSH),
                 script=[str(script), *(str(p) for p in (marker20, release, marker40))])
    wait_for(marker20, proc)
    wait_until(lambda: last_logged_step(run_dir) >= 22, 300, what="step 22 in metrics.csv", proc=proc)
    release.touch()
    wait_for(marker40, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    ckpts = run_dir / "checkpoints"
    assert (ckpts / ".tmp-step000040.ckpt").exists() and not (ckpts / "step000040.ckpt").exists()
    assert os.path.realpath(ckpts / "last.ckpt").endswith("step000020.ckpt") and verify(ckpts / "last.ckpt").ok
    assert_same_from(resume(workdir, name, *extra), reference_losses(workdir, "one"), 20)
    assert not list(ckpts.glob(".tmp-*"))


@pytest.mark.slow
def test_sigterm_during_a_background_save_exits_zero_once_it_is_complete(workdir, tmp_path):
    """Step 40's background write is held until the test releases it, after SIGTERM and once the training thread
    waits for it (the stop's own checkpoint must not start before it): the run ends with both published and
    verified."""
    script = tmp_path / "held_save.py"
    script.write_text(HELD_SAVE)
    marker, release, waiting = tmp_path / "saving", tmp_path / "release", tmp_path / "waiting"
    run_dir = workdir / "outputs" / "sigterm_mid_save"
    proc = start(workdir, *run_args(workdir, "sigterm_mid_save", ASYNC),
                 script=[str(script), *(str(p) for p in (marker, release, waiting))])
    wait_for(marker, proc)
    os.kill(proc.pid, signal.SIGTERM)
    wait_for(waiting, proc)  # the stop's checkpoint waits for step 40's, still held
    release.touch()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    ckpts = run_dir / "checkpoints"
    stopped = resume_step(run_dir)
    assert f"stopped by SIGTERM at step {stopped}" in out and stopped >= 40
    assert verify(ckpts / "step000040.ckpt").ok and verify(ckpts / f"step{stopped:06d}.ckpt").ok
    assert not list(ckpts.glob(".tmp-*"))


def reference_losses(workdir: Path, strategy: str) -> dict[int, float]:
    """The uninterrupted run of `strategy` (sync saves), made here when absent."""
    reference_dir = workdir / "outputs" / f"whole_{strategy}"
    if not reference_dir.exists():
        run(workdir, "train", *run_args(workdir, f"whole_{strategy}", *STRATEGIES[strategy]))
    return step_losses(reference_dir)


def resume(workdir: Path, name: str, *extra: str) -> dict[int, float]:
    run(workdir, "train", *run_args(workdir, name, *extra, "ckpt_path=last"))
    return step_losses(workdir / "outputs" / name)


def test_keep_last_k_rotates_but_keeps_last_and_every_kth_step(workdir):
    run_dir = workdir / "outputs" / "rotate"
    run(workdir, "train", *run_args(workdir, "rotate", "trainer.max_steps=50", "checkpoint.every_n_steps=10",
                                "checkpoint.keep_last=2", "checkpoint.keep_every=20", "trainer.limit_val_batches=0"))
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    kept = ["step000020.ckpt", "step000040.ckpt", "step000050.ckpt"]  # 20 and 40: every 20th, kept for good
    assert names == sorted(["last.ckpt", *kept, *(f"{k}.checksums.json" for k in kept)]), names
    assert os.path.realpath(run_dir / "checkpoints" / "last.ckpt").endswith("step000050.ckpt")


@pytest.mark.slow
def test_a_full_disk_names_the_lost_checkpoint_keeps_the_last_and_resumes(workdir, tmp_path):
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK)
    run_dir = workdir / "outputs" / "disk_full"
    proc = start(workdir, *run_args(workdir, "disk_full"), script=[str(script)])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    (line,) = error_lines(err)
    ckpts = run_dir / "checkpoints"
    assert "step 40's checkpoint was not written: no space left on the device" in line, line
    assert f"the last complete checkpoint is {(ckpts / 'step000020.ckpt').resolve()} (" in line
    assert "checkpoint.keep_last" in line and "resume: python -m gpt4_lightning.train" in line
    assert not (ckpts / ".tmp-step000040.ckpt").exists()  # the partial one removed at once
    assert os.path.realpath(ckpts / "last.ckpt").endswith("step000020.ckpt") and "Traceback" not in err
    resumed = run(workdir, "train", *run_args(workdir, "disk_full", "ckpt_path=last"))
    assert f"steps: {STEPS}" in resumed.stdout
