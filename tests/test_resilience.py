"""Kills, signals, interrupted saves and non-finite losses never cost more than the steps since the last
checkpoint: exact resume after SIGKILL (1 process and 2-process FSDP2), graceful SIGTERM/SIGUSR1,
atomic checkpoints, the non-finite guard. Real CLI runs in subprocesses, compared step by step."""

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import logged_losses, run, step_losses, step_metric, train_args

from gpt4_lightning.checkpoint.load import read_checkpoint

STEPS, EVERY = 120, 20


def args(workdir: Path, name: str, *extra: str) -> list[str]:
    base = [a for a in train_args(workdir, STEPS) if not a.startswith(("run_name=", "trainer.log_every_n_steps=",
                                                                       "checkpoint.every_n_steps="))]
    return [*base, f"run_name={name}", "trainer.log_every_n_steps=1", f"checkpoint.every_n_steps={EVERY}",
            "trainer.enable_progress_bar=false", *extra]


def start(workdir: Path, *cli_args: str, script: list[str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "GPT4_LIGHTNING_CACHE": str(workdir / "cache")}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = script or ["-m", "gpt4_lightning.train"]
    return subprocess.Popen([sys.executable, *cmd, *cli_args], cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_until(ready, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    """Poll `ready()` until it holds, while `proc` runs; fail if it exits first or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            tail = proc.stderr.read()[-3000:] if proc.stderr else ""
            raise AssertionError(f"exited {proc.returncode} before {what}: {tail}")
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.01)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    wait_until(path.exists, proc, f"{path}", timeout)


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
    wait_until(lambda: last_logged_step(run_dir) >= EVERY + 2, proc, f"step {EVERY + 2} in metrics.csv")



def resume_step(run_dir: Path) -> int:
    return read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"]  # a file, or a sharded dir's meta.pt


def assert_same_from(resumed: dict[int, float], reference: dict[int, float], first: int) -> None:
    compared = [s for s in reference if s >= first]
    assert compared and max(compared) == STEPS - 1
    mismatched = [(s, resumed.get(s), reference[s]) for s in compared if resumed.get(s) != reference[s]]
    assert not mismatched, mismatched[:5]  # exact equality: bitwise-identical losses


# fsdp runs with the in-training lm-eval on (rank 0 scores the gathered weights every 40 steps): the stream and
# the resume must not notice it
DOWNSTREAM = ["eval.tasks=gpt4l_next_line", "eval.every_n_steps=40", "eval.limit=4"]
EVAL_METRIC = "eval/gpt4l_next_line/acc"
# one process trains on the warmup-stable-decay schedule, decaying from step 12 of 120: the kill and the resume
# (after step 20) land mid-decay
WSD = ["scheduler=wsd", "scheduler.decay_fraction=0.9", "scheduler.decay_shape=1-sqrt", "scheduler.min_lr_ratio=0.1"]
STRATEGIES = {"one": WSD, "fsdp": ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2",
                                  "data.batch_size=4", *DOWNSTREAM]}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", [*STRATEGIES, "mix"])
def test_sigkill_then_resume_is_bitwise_identical(workdir, strategy, request):
    """"mix": one process on data=mix (two sources, 0.75/0.25), whose stream must resume as exactly."""
    on_mix = request.getfixturevalue("mix_args") if strategy == "mix" else list
    extra = STRATEGIES.get(strategy, [])
    run(workdir, "train", *on_mix(args(workdir, f"whole_{strategy}", *extra)))
    reference = step_losses(workdir / "outputs" / f"whole_{strategy}")
    if strategy == "one":  # the lr Lightning stepped, at every step, is the schedule's definition
        from test_optim import wsd_definition

        lrs = step_metric(workdir / "outputs" / "whole_one", "train/lr")
        assert sorted(lrs) == list(range(STEPS))
        assert lrs == pytest.approx({s: 3e-3 * wsd_definition(s, 5, STEPS, 0.9, "1-sqrt", 0.1) for s in lrs})

    run_dir = workdir / "outputs" / f"killed_{strategy}"
    proc = start(workdir, *on_mix(args(workdir, f"killed_{strategy}", *extra, FLUSH)))
    wait_past_checkpoint(run_dir, proc)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # every rank, no chance to clean up
    proc.wait()
    first = resume_step(run_dir)
    assert first >= EVERY and first < STEPS

    resumed = run(workdir, "train", *on_mix(args(workdir, f"killed_{strategy}", *extra, "ckpt_path=last")))
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
        run(workdir, "train", *args(workdir, f"whole_{strategy}", *extra))
    reference = step_losses(reference_dir)

    name = f"stopped_{strategy}"
    run_dir = workdir / "outputs" / name
    proc = start(workdir, *args(workdir, name, *extra, FLUSH))
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

    run(workdir, "train", *args(workdir, name, *extra, "ckpt_path=last"))
    assert_same_from(step_losses(run_dir), reference, stopped)


def patched_save(prelude: str, at_step_40: str) -> str:
    """A `python -m gpt4_lightning.train` stand-in whose save of step 40 writes part of the file, then runs
    `at_step_40` (a kill while writing, a full disk); `prelude` runs first (it may take arguments off argv)."""
    return f"""
import errno, os, runpy, sys, time
from pathlib import Path
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

{prelude}
save = TorchCheckpointIO.save_checkpoint

def patched(self, checkpoint, path, storage_options=None):
    if ".tmp-step000040" in str(path):
        with open(path, "wb") as f:
            f.write(b"PK partial checkpoint")
{textwrap.indent(at_step_40, " " * 8)}
    return save(self, checkpoint, path, storage_options)

TorchCheckpointIO.save_checkpoint = patched
sys.argv[0] = "train"
runpy.run_module("gpt4_lightning.train", run_name="__main__", alter_sys=True)
"""


SLOW_SAVE = patched_save("marker = Path(sys.argv.pop(1))", "marker.touch()\ntime.sleep(600)  # killed while 'writing'")
FULL_DISK = patched_save("", "raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))")


@pytest.mark.slow
def test_kill_during_a_save_leaves_last_usable(workdir, tmp_path):
    script = tmp_path / "slow_save.py"
    script.write_text(SLOW_SAVE)
    marker = tmp_path / "saving"
    run_dir = workdir / "outputs" / "kill_mid_save"
    proc = start(workdir, *args(workdir, "kill_mid_save"), script=[str(script), str(marker)])
    wait_for(marker, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    ckpts = run_dir / "checkpoints"
    assert (ckpts / ".tmp-step000040.ckpt").exists()  # the interrupted save, never visible as a checkpoint
    assert not (ckpts / "step000040.ckpt").exists()
    assert os.path.realpath(ckpts / "last.ckpt").endswith("step000020.ckpt")
    sample = run(workdir, "generate", f"ckpt_path={ckpts / 'last.ckpt'}", "max_new_tokens=4", "prompt=def")
    assert "(step 20)" in sample.stdout

    run(workdir, "train", *args(workdir, "kill_mid_save", "trainer.max_steps=50", "ckpt_path=last"))
    assert not (ckpts / ".tmp-step000040.ckpt").exists()  # cleaned up by the next run
    assert torch.load(ckpts / "step000040.ckpt", weights_only=True)["global_step"] == 40
    assert os.path.realpath(ckpts / "last.ckpt").endswith("step000050.ckpt")


def test_keep_last_k_rotates_but_keeps_last(workdir):
    run_dir = workdir / "outputs" / "rotate"
    run(workdir, "train", *args(workdir, "rotate", "trainer.max_steps=50", "checkpoint.every_n_steps=10",
                                "checkpoint.keep_last=2", "trainer.limit_val_batches=0"))
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step000040.ckpt", "step000050.ckpt"], names
    assert os.path.realpath(run_dir / "checkpoints" / "last.ckpt").endswith("step000050.ckpt")


# --- non-finite guard ---------------------------------------------------------------------------------


class PoisonLoss:
    """Makes the loss NaN on one optimizer step (a poisoned batch), and snapshots the weights around it."""

    def __init__(self, step: int) -> None:
        self.step, self.before, self.after = step, None, None

    def __call__(self, trainer, module, batch, batch_idx) -> None:  # on_train_batch_start
        if trainer.global_step == self.step:
            self.before = {k: v.clone() for k, v in module.model.state_dict().items()}
            loss = type(module.model).loss
            module.model.loss = lambda *args: loss(module.model, *args) * float("nan")
        elif "loss" in vars(module.model):
            self.after = {k: v.clone() for k, v in module.model.state_dict().items()}
            del module.model.loss


def fit_with_poison(workdir, tmp_path, monkeypatch, nonfinite: str, *extra: str, stops: bool = True):
    """8 steps with a non-finite loss at step 3; `stops=False`: without GracefulStop (nothing acts on the guard's
    stop)."""
    import lightning as L

    from gpt4_lightning.config import compose_config
    from gpt4_lightning.run.build import build, callback
    from gpt4_lightning.training.nonfinite import NonFiniteGuard
    from gpt4_lightning.training.stop import GracefulStop

    monkeypatch.setenv("GPT4_LIGHTNING_CACHE", str(workdir / "cache"))
    cfg = compose_config("train", [*args(workdir, "poison", "trainer.max_steps=8", "trainer.limit_val_batches=0",
                                         f"nonfinite.mode={nonfinite}", "logger=none", *extra),
                                   f"hydra.run.dir={tmp_path}"])
    module, datamodule, trainer = build(cfg)
    if not stops:
        trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, GracefulStop)]
    poison = PoisonLoss(step=3)
    trainer.callbacks.append(type("Poison", (L.Callback,), {"on_train_batch_start": lambda s, *a: poison(*a)})())
    trainer.fit(module, datamodule=datamodule)
    return callback(trainer, NonFiniteGuard), trainer, poison


@pytest.mark.parametrize("fused", [True, False], ids=["on-device", "host"])
def test_nonfinite_loss_is_skipped_without_touching_the_weights(workdir, tmp_path, monkeypatch, fused):
    """Fused AdamW skips the step on the device (`found_inf`, counts read every log_every_n_steps = 3); another
    optimizer has its gradients dropped after a host read of the norm. Either way the bad step changes nothing:
    weights, moments, step count."""
    guard, trainer, poison = fit_with_poison(workdir, tmp_path, monkeypatch, "skip", f"optim.fused={fused}",
                                             "trainer.log_every_n_steps=3")
    assert trainer.global_step == 8 and guard.bad_steps == 1
    for name, value in poison.before.items():  # the poisoned step changed nothing
        assert torch.equal(value, poison.after[name]), name
    optimizer = trainer.optimizers[0]
    assert all(int(optimizer.state[p]["step"]) == 7 for p in trainer.lightning_module.parameters())
    assert all(torch.isfinite(p).all() for p in trainer.lightning_module.parameters())
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_nonfinite_stop_keeps_a_checkpoint_from_before_the_bad_step(workdir, tmp_path, monkeypatch):
    from gpt4_lightning.checkpoint.load import load_model

    guard, trainer, poison = fit_with_poison(workdir, tmp_path, monkeypatch, "stop")
    assert guard.stop_step == 3 and trainer.global_step == 4  # stopped right after the bad step
    model, _ = load_model(tmp_path / "checkpoints" / "last.ckpt")
    saved = model.state_dict()
    for name, value in poison.before.items():
        assert torch.equal(value, saved[name]), name


def test_nonfinite_stop_read_later_still_keeps_the_weights_from_before_the_bad_step(workdir, tmp_path,
                                                                                    monkeypatch):
    """On the device the guard reads its counts every log_every_n_steps (5): the bad step 3 is seen after step 4,
    whose update is skipped too, so the checkpoint still holds the weights from before step 3."""
    from gpt4_lightning.checkpoint.load import load_model

    guard, trainer, poison = fit_with_poison(workdir, tmp_path, monkeypatch, "stop", "trainer.log_every_n_steps=5")
    assert guard.stop_step == 3 and trainer.global_step == 5 and guard.bad_steps == 1
    model, _ = load_model(tmp_path / "checkpoints" / "last.ckpt")
    saved = model.state_dict()
    for name, value in poison.before.items():
        assert torch.equal(value, saved[name]), name


@pytest.mark.parametrize("fused", [True, False], ids=["on-device", "host"])
def test_once_stopping_the_guard_skips_every_update_whenever_the_stop_comes(workdir, tmp_path, monkeypatch, fused):
    """The stop may come steps after the bad one (the device counts' next read; on several ranks one step more):
    the guard skips every update from the bad step on, on both paths. Here nothing acts on its stop, so the run's
    8 steps end with the weights of before the bad step 3."""
    guard, trainer, poison = fit_with_poison(workdir, tmp_path, monkeypatch, "stop", f"optim.fused={fused}",
                                             "trainer.log_every_n_steps=2", stops=False)
    assert guard.stop_step == 3 and trainer.global_step == 8
    weights = trainer.lightning_module.model.state_dict()
    for name, value in poison.before.items():
        assert torch.equal(value, weights[name]), name


def test_nonfinite_stop_through_the_cli_is_one_error_line(workdir):
    proc = run(workdir, "train", *args(workdir, "diverge", "optim.lr=1e30", "nonfinite.mode=stop",
                                       "trainer.gradient_clip_val=null"), check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "non-finite loss" in errors[0] and "optim.lr" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = workdir / "outputs" / "diverge" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values())  # the weights from before the bad step


# --- faults outside the run: a rank lost, the disk full -----------------------------------------------


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


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_a_lost_rank_ends_the_run_in_one_line_naming_it_and_the_resume_works(workdir):
    fsdp = [a for a in STRATEGIES["fsdp"] if a not in DOWNSTREAM]
    run_dir = workdir / "outputs" / "rank_lost"
    proc = start(workdir, *args(workdir, "rank_lost", *fsdp, FLUSH))
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
def test_a_full_disk_names_the_lost_checkpoint_keeps_the_last_and_resumes(workdir, tmp_path):
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK)
    run_dir = workdir / "outputs" / "disk_full"
    proc = start(workdir, *args(workdir, "disk_full"), script=[str(script)])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    (line,) = error_lines(err)
    ckpts = run_dir / "checkpoints"
    assert "step 40's checkpoint was not written: no space left on the device" in line, line
    assert f"the last complete checkpoint is {(ckpts / 'step000020.ckpt').resolve()} (" in line
    assert "checkpoint.keep_last" in line and "resume: python -m gpt4_lightning.train" in line
    assert not (ckpts / ".tmp-step000040.ckpt").exists()  # the partial one removed at once
    assert os.path.realpath(ckpts / "last.ckpt").endswith("step000020.ckpt") and "Traceback" not in err
    resumed = run(workdir, "train", *args(workdir, "disk_full", "ckpt_path=last"))
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
                                 *args(workdir, "rank_hung", *fsdp, FLUSH, "parallel.collective_timeout_s=30")],
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
