"""Every option `python -m gpt4_lightning.train --help` lists works from this install, through the CLI.

Options that run on a CPU are smoke-run (a few steps, validation, a checkpoint, the report), a group's options in
one Hydra multirun where they take the same overrides; GPU-only ones are composed and give their one `error:` line
here. `CHECKED` must name every listed option, so a new option without a check fails `test_help_lists_...`.
"""

import os
import re
from pathlib import Path

import pytest

from gpt4_lightning.config import config_dir
from tests.helpers.cli import run, train_args

GROUPS = ("model", "data", "tokenizer", "trainer", "precision", "optim", "scheduler", "logger", "callbacks",
          "experiment")
# how each listed option is checked: "run" (smoke-run below), "compose" (composed and checked in-process: CPU-able
# but hours long), "gpu" (a GPU preset: its error line here)
CHECKED = {
    "logger": {"csv": "run", "tensorboard": "run", "wandb": "run", "none": "run"},
    "precision": {"fp32": "run", "bf16_mixed": "run", "bf16_true": "run"},
    "scheduler": {"warmup_cosine": "run", "wsd": "run", "constant": "run"},
    "trainer": {"default": "run", "ddp": "run", "fsdp": "run"},
    "optim": {"adamw": "run"},
    "callbacks": {"default": "run"},
    "data": {"files": "run", "hf_hub": "run", "mix": "run", "stdlib": "run"},
    "tokenizer": {"bpe": "run", "file": "run", "hub": "run"},
    "model": {"gpt4_tiny": "run", "gpt4_125m": "compose", "gpt4_350m": "compose", "gpt4_1b": "compose",
              "gpt4_2b": "compose"},
    "experiment": {"smoke": "run", "gpt4_125m_fsdp": "gpu"},
}
SMOKE_STEPS = ["trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.limit_val_batches=1",
               "trainer.log_every_n_steps=1", "checkpoint.every_n_steps=3", "report.sample_tokens=8",
               "scheduler.warmup_steps=1"]


def listed_options(workdir: Path) -> dict[str, list[str]]:
    """The `== Configuration groups ==` section of `train --help`: group -> options."""
    out = run(workdir, "train", "--help").stdout
    section = out.split("== Configuration groups ==")[1].split("== Config ==")[0]
    return {m[1]: [o.strip() for o in m[2].split(",")] for m in re.finditer(r"^(\w+): (.+)$", section, re.M)}


def test_help_lists_each_option_file_once_and_nothing_internal(workdir):
    listed = listed_options(workdir)
    assert set(listed) == set(GROUPS), listed
    for group, options in listed.items():
        files = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
        assert sorted(options) == files, (group, options)
        assert not [o for o in options if "schema" in o], (group, options)
        assert set(options) == set(CHECKED[group]), f"{group}: an option without a check in CHECKED"


def sweep(workdir: Path, name: str, *args: str):
    """A multirun into `workdir/options/<name>`: its job directories in job order, and the process."""
    sweep_dir = workdir / "options" / name
    proc = run(workdir, "train", "-m", *args, f"hydra.sweep.dir={sweep_dir}")
    return sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)), proc


def smoke_args(workdir: Path) -> list[str]:
    replaced = ("run_name=", "trainer.max_steps=", "scheduler.warmup_steps=")
    return [a for a in train_args(workdir, 3) if not a.startswith(replaced)] + SMOKE_STEPS


def assert_trained(job: Path, csv_history: bool = True) -> None:
    """Three steps, a checkpoint, the report; with `csv_history` the CSV every logger keeps."""
    assert (job / "checkpoints" / "last.ckpt").exists(), job
    assert (job / "report.md").is_file(), job
    if csv_history:
        rows = (job / "logs" / "metrics.csv").read_text()
        assert "train/loss" in rows and "val/loss" in rows, job


@pytest.mark.slow
def test_every_logger_runs_and_keeps_what_it_should(workdir, slurm_installed):
    jobs, proc = sweep(workdir, "logger", *smoke_args(workdir), "logger=csv,tensorboard,wandb,none")
    assert_clean_console(proc)  # wandb's own "anonymous setting has no effect" included
    csv_job, tb_job, wandb_job, none_job = jobs
    for job in (csv_job, tb_job, wandb_job):
        assert_trained(job)
    assert_trained(none_job, csv_history=False)
    assert not (none_job / "logs").exists() and "No metrics logged" in (none_job / "report.md").read_text()
    # tensorboard's own reader on the event files
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in (tb_job / "tensorboard").rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    scalars = accumulator.Tags()["scalars"]
    assert {"train/loss", "val/loss", "train/lr"} <= set(scalars), scalars
    assert [e.step for e in accumulator.Scalars("train/loss")] == [0, 1, 2]
    assert list((wandb_job / "wandb").glob("offline-run-*/run-*.wandb")), "no offline wandb run"
    assert (png := csv_job / "report.png").is_file() and png.stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.parametrize("group", ["precision", "scheduler", "trainer"])
def test_every_option_of_a_group_runs(workdir, group):
    options = list(CHECKED[group])
    extra = ["trainer.devices=1"] if group == "trainer" else []  # ddp/fsdp as one process here (2 elsewhere)
    jobs, _ = sweep(workdir, group, *smoke_args(workdir), *extra, f"{group}={','.join(options)}")
    assert len(jobs) == len(options)
    for job in jobs:
        assert_trained(job)


@pytest.mark.slow
def test_every_data_and_tokenizer_option_runs(workdir, mix_args):
    base = smoke_args(workdir)
    no_data = [a for a in base if not a.startswith(("data=", "data.path="))]
    (workdir / "ds").mkdir(exist_ok=True)
    (workdir / "ds" / "train.jsonl").write_text((workdir / "corpus.jsonl").read_text())
    runs = {
        "data=files": base,
        "data=hf_hub": [*no_data, "data=hf_hub", f"data.name={workdir / 'ds'}"],
        "data=mix": mix_args(base),
    }
    for name, args in runs.items():
        run(workdir, "train", *args, f"run_name=opt_{name.replace('=', '_')}")
        assert_trained(workdir / "outputs" / f"opt_{name.replace('=', '_')}")
    tokenizer_dir = workdir / "mix" / "web"  # a prepared directory: its tokenizer.json (512 tokens)
    for name, args in {"tokenizer=file": ["tokenizer=file", f"tokenizer.path={tokenizer_dir / 'tokenizer.json'}"],
                       "tokenizer=hub": ["tokenizer=hub", f"tokenizer.name={tokenizer_dir}"]}.items():
        run(workdir, "train", *base, *args, f"run_name=opt_{name.replace('=', '_')}")
        assert_trained(workdir / "outputs" / f"opt_{name.replace('=', '_')}")


@pytest.mark.slow
def test_the_smoke_experiment_on_the_default_data_runs_with_a_clean_console(workdir, tmp_path,
                                                                            slurm_installed):
    """`experiment=smoke` as a new user types it (the stdlib corpus, gpt4_tiny): it also covers data=stdlib,
    tokenizer=bpe and model=gpt4_tiny. Its output holds no warning but those `EXPECTED_WARNINGS` explains."""
    proc = run(workdir, "train", "experiment=smoke", "run_name=opt_smoke", cache=tmp_path / "cache")
    assert_trained(workdir / "outputs" / "opt_smoke")
    assert_clean_console(proc)


# a warning line: Python's `<file>.py:<line>: <message>` (Lightning's format too), or a logger's WARNING
WARNING_LINE = re.compile(r"^\S+\.py:\d+: |warning|warn:", re.IGNORECASE)
EXPECTED_WARNINGS: dict[str, str] = {}  # a fragment of a warning the test allows -> why it is right to show it


@pytest.fixture
def slurm_installed(tmp_path, monkeypatch) -> None:
    """A machine with Slurm's commands on PATH (a login node, this project's CI), where Lightning warns that
    srun is not used: an `srun` that is never run, only found."""
    bin_dir = tmp_path / "slurm_bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def assert_clean_console(proc) -> None:
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if WARNING_LINE.search(line)]
    unexpected = [line for line in lines if not any(fragment in line for fragment in EXPECTED_WARNINGS)]
    assert unexpected == [], "\n".join(unexpected)


@pytest.mark.parametrize("option", [f"{g}={o}" for g, opts in CHECKED.items() for o, how in opts.items()
                                    if how == "compose"])
def test_large_presets_compose_and_pass_or_name_the_fix(option):
    """The presets a CPU run would take hours on: composed and checked as a run here would be (types, ranges,
    trainer, memory preflight against this machine); a refusal is the preflight's, naming changes that fit."""
    from gpt4_lightning.config import compose_config
    from gpt4_lightning.run.build import check_run

    cfg = compose_config("train", [option])
    try:
        run_cfg = check_run(cfg, None)
    except ValueError as e:
        assert str(e).startswith("preflight: ") and "fits with" in str(e), e
    else:
        assert run_cfg.model.dim >= 768, run_cfg.model


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the GPU preset runs where there is a GPU")
def test_the_gpu_experiment_gives_one_error_line_without_a_gpu(workdir):
    proc = run(workdir, "train", "experiment=gpt4_125m_fsdp", "run_name=opt_gpu", check=False,
               cache=workdir / "gpu_cache")
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "error: trainer.accelerator=gpu but torch sees no CUDA GPU on this machine; use trainer.accelerator=cpu "
        "(or auto)"], proc.stderr[-2000:]
    assert not (workdir / "gpu_cache").exists() and not (workdir / "outputs" / "opt_gpu").exists()
