"""The memory preflight (run/preflight.py): the plan against this machine's memory before anything is built, in
process on composed configs, and through the real CLI (a refusal is one `error:` line naming a fix that fits)."""

from __future__ import annotations

import re
import time

import pytest

from gpt4_lightning.config import compose_config, to_typed
from gpt4_lightning.memory.plan import GIB
from gpt4_lightning.model.config import GPT4Config
from gpt4_lightning.parallel.config import ParallelConfig
from gpt4_lightning.run.preflight import OVERHEAD, PreflightError, RunShape, check_memory, run_shape
from tests.helpers.cli import run, train_args
from tests.helpers.paths import REPO


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


def test_a_background_checkpoint_plans_its_staged_copy_of_the_training_state():
    """checkpoint.async_save on CPU: the staged parameters and AdamW state come on top of the step's peak."""
    run_cfg, trainer_cfg = composed("model=gpt4_tiny", "data.seq_len=256", "data.batch_size=8",
                                    "checkpoint.async_save=true")
    shape = run_shape(run_cfg, trainer_cfg, gpus=0)
    plan = shape.plan()
    sync_needed = (plan.peak + OVERHEAD["cpu"]) / GIB
    assert plan.checkpoint_staging == plan.params + plan.optimizer  # weights and AdamW moments, this rank's
    staged = plan.checkpoint_staging / GIB
    assert sync_needed * 1.02 < sync_needed + staged  # 12 bytes a parameter: more than the margin below
    with pytest.raises(PreflightError, match=r"GiB staged by checkpoint.async_save"):
        check_memory(run_cfg, trainer_cfg, "error", sync_needed * 1.02)  # enough for a sync save, not for this
    check_memory(run_cfg, trainer_cfg, "error", (sync_needed + staged) * 1.02)


def test_the_measured_cpu_configs_are_never_refused(monkeypatch):
    """bench/memory_plan.py --measure's configs run on this machine: the preflight must let them."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # bench/ is scripts, not a package
    from memory_plan import MEASURE_CONFIGS, MEASURE_MODEL, MEASURE_SEQ

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
