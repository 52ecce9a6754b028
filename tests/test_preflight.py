"""Run safety: the memory preflight (the plan against this machine before anything is built) and one run per run
directory (a lock held for the run's lifetime, released by any exit)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import logged_losses, run, train_args

from gpt4_lightning.config import compose_config, to_typed
from gpt4_lightning.memory.available import cgroup_headroom, cpu_available
from gpt4_lightning.memory.plan import GIB
from gpt4_lightning.model.config import GPT4Config
from gpt4_lightning.parallel.config import ParallelConfig
from gpt4_lightning.run.preflight import OVERHEAD, PreflightError, RunShape, check_memory, run_shape

REPO = Path(__file__).resolve().parent.parent


def composed(*overrides: str):
    cfg = compose_config("train", list(overrides))
    return to_typed(cfg), cfg.trainer


# --- the preflight ------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["gpt4_tiny", "gpt4_125m"])
@pytest.mark.parametrize("trainer,precision,ac", [("default", "fp32", False), ("ddp", "bf16_mixed", False),
                                                   ("fsdp", "bf16_mixed", True), ("default", "bf16_true", False)])
def test_the_upper_bound_is_above_every_plan(preset, trainer, precision, ac):
    """A run under half its upper bound is passed without planning: the bound must never be below the plan."""
    run_cfg, trainer_cfg = composed(f"model={preset}", f"trainer={trainer}", f"precision={precision}",
                                    "trainer.accelerator=cpu", "trainer.devices=2" if trainer != "default" else
                                    "trainer.devices=1", "data.seq_len=128", "data.batch_size=2",
                                    f"parallel.activation_checkpointing={str(ac).lower()}")
    shape = run_shape(run_cfg, trainer_cfg, gpus=0)
    assert shape.upper_bound() >= shape.plan().peak


def test_cgroup_limits_v1_and_v2(tmp_path):
    v2 = tmp_path / "v2"
    (v2 / "job" / "step").mkdir(parents=True)
    (v2 / "job" / "memory.max").write_text(f"{8 * GIB}\n")
    (v2 / "job" / "memory.current").write_text(f"{3 * GIB}\n")
    (v2 / "job" / "step" / "memory.max").write_text("max\n")  # no limit at this level: the parent's counts
    (tmp_path / "cg2").write_text("0::/job/step\n")
    assert cgroup_headroom(tmp_path / "cg2", v2) == 5 * GIB
    v1 = tmp_path / "v1"
    (v1 / "memory" / "slurm").mkdir(parents=True)
    (v1 / "memory" / "slurm" / "memory.limit_in_bytes").write_text(f"{4 * GIB}\n")
    (v1 / "memory" / "slurm" / "memory.usage_in_bytes").write_text(f"{1 * GIB}\n")
    (tmp_path / "cg1").write_text("4:memory:/slurm\n1:cpu:/\n")
    assert cgroup_headroom(tmp_path / "cg1", v1) == 3 * GIB
    (v1 / "memory" / "slurm" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "unlimited"
    assert cgroup_headroom(tmp_path / "cg1", v1) is None
    assert cpu_available(2).per_rank <= cpu_available(1).per_rank // 2 + 1


def test_the_limit_is_the_plan_plus_the_process():
    """Just above the plan: a warning; just below: the error, with the plan's figures."""
    run_cfg, trainer_cfg = composed("model=gpt4_tiny", "data.seq_len=256", "data.batch_size=8")
    shape = run_shape(run_cfg, trainer_cfg, gpus=0)
    needed = (shape.plan().peak + OVERHEAD["cpu"]) / GIB
    check_memory(run_cfg, trainer_cfg, "error", needed * 1.02)  # near: warns, does not refuse
    with pytest.raises(PreflightError, match=r"preflight: this run's memory plan is .* GiB .*fits with: "):
        check_memory(run_cfg, trainer_cfg, "error", needed * 0.98)
    check_memory(run_cfg, trainer_cfg, "warn", needed * 0.98)
    check_memory(run_cfg, trainer_cfg, "off", 0.001)


def test_the_measured_cpu_configs_are_never_refused():
    """bench/memory_plan.py --measure's configs run on this machine: the preflight must let them."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from memory_plan import MEASURE_CONFIGS, MEASURE_MODEL, MEASURE_SEQ
    finally:
        sys.path.remove(str(REPO / "bench"))
    for _, strategy, devices, batch, ac in MEASURE_CONFIGS:
        overrides = ["model=gpt4_125m", *(f"model.{o}" for o in MEASURE_MODEL), f"data.seq_len={MEASURE_SEQ}",
                     f"data.batch_size={batch}", "trainer.accelerator=cpu", f"trainer.devices={devices}",
                     f"parallel.activation_checkpointing={str(ac).lower()}"]
        check_memory(*composed(*overrides, *([f"trainer={strategy}"] if strategy != "single" else [])), "error")


@pytest.mark.slow
def test_gpt4_2b_is_refused_here_with_a_fix_the_planner_says_fits(workdir):
    start = time.perf_counter()
    proc = run(workdir, "train", "model=gpt4_2b", "trainer=fsdp", "run_name=too_big", check=False)
    seconds = time.perf_counter() - start
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
    line = lines[0]
    assert "preflight: this run's memory plan is" in line and "would be killed" in line, line
    print(f"\ngpt4_2b trainer=fsdp refused in {seconds:.1f} s: {line}")
    fix = re.search(r"fits with: (.+?) \(([\d.]+) GiB\)", line)
    assert fix, line
    available = float(re.search(r"leaves ([\d.]+) GiB per rank", line).group(1))
    assert float(fix.group(2)) <= available
    run_cfg, trainer_cfg = composed("model=gpt4_2b", "trainer=fsdp", *fix.group(1).split())
    check_memory(run_cfg, trainer_cfg, "error", available)  # the suggestion, planned again: it fits
    assert not (workdir / "outputs" / "too_big").exists()  # refused before anything was written


def test_preflight_warn_runs_what_error_refuses(workdir):
    tiny = [*train_args(workdir, 2), "run_name=preflight_warn", "trainer.limit_val_batches=0",
            "preflight.memory_gib=0.01"]
    refused = run(workdir, "train", *tiny, check=False)
    assert refused.returncode == 1 and "error: preflight:" in refused.stderr, refused.stderr[-2000:]
    ran = run(workdir, "train", *tiny, "preflight.mode=warn")
    assert "preflight: this run's memory plan is" in ran.stdout + ran.stderr and "steps: 2" in ran.stdout


def test_an_uncommon_shape_is_planned_not_guessed():
    """A shape the upper bound does not pass is planned: gpt4_2b's parameters alone exceed any CPU here."""
    shape = RunShape(GPT4Config(), False, 1, 1, "32-true", 1, 64, ParallelConfig(), "cpu")
    assert shape.plan().params == 2_460_899_840 * 4


# --- one run per run directory ------------------------------------------------------------------------


def start_train(workdir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "GPT4_LIGHTNING_CACHE": str(workdir / "cache")}
    return subprocess.Popen([sys.executable, "-m", "gpt4_lightning.train", *args], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def until(ready, proc: subprocess.Popen, timeout: float = 120):
    """Poll `ready()` until it returns something true while `proc` runs."""
    deadline = time.monotonic() + timeout
    while not (value := ready()):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, f"{ready} never held"
        time.sleep(0.01)
    return value


def wait_for_holder(lock: Path, proc: subprocess.Popen) -> dict:
    """Until `proc` has written its record into the run lock (it holds the lock from then on)."""
    def holder() -> dict | None:
        try:
            record = json.loads(lock.read_text())
        except (OSError, ValueError):
            return None
        return record if record.get("pid") == proc.pid else None

    return until(holder, proc)


@pytest.mark.slow
def test_one_run_per_directory_and_a_killed_holder_frees_it(workdir):
    args = [*train_args(workdir, 60), "run_name=locked", "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false"]
    run_dir = workdir / "outputs" / "locked"
    first = start_train(workdir, *args)
    holder = wait_for_holder(run_dir / ".run.lock", first)
    until((run_dir / "checkpoints" / "step000020.ckpt").exists, first)  # training: Hydra's files are written
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

    killed = start_train(workdir, *args, "trainer.max_steps=100000", "ckpt_path=last")
    wait_for_holder(run_dir / ".run.lock", killed)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    again = run(workdir, "train", *args, "trainer.max_steps=62", "ckpt_path=last")
    assert "steps: 62" in again.stdout


# --- sweeps checked before they start -----------------------------------------------------------------


def test_a_bad_sweep_point_stops_the_sweep_before_any_job(workdir):
    sweep = workdir / "multirun" / "checked_sweep"
    proc = run(workdir, "train", "-m", *train_args(workdir, 2), f"hydra.sweep.dir={sweep}",
               "optim.lr=1e-3,-1,3e-3", check=False)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: #1 (") and "optim.lr=-1" in lines[0], proc.stderr
    assert "must be a number > 0" in lines[0] and "no job of the sweep was launched" in lines[0]
    assert not sweep.exists() and "Launching" not in proc.stdout  # nothing ran, nothing was written
    # a point too big for its memory is found the same way, by the preflight
    proc = run(workdir, "train", "-m", *train_args(workdir, 2), f"hydra.sweep.dir={sweep}",
               "preflight.memory_gib=100,0.01", check=False)
    assert proc.returncode == 1 and "error: #1 (preflight.memory_gib=0.01" in proc.stderr, proc.stderr[-3000:]
    assert "preflight: this run's memory plan is" in proc.stderr
    assert not sweep.exists()
