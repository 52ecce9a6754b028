"""The real CLI in subprocesses: `python -m gpt4_lightning.<entry>` on the tiny model, and what its runs log."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

TINY_MODEL = ["model.num_tokens=512", "model.dim=64", "model.depth=2", "model.heads=4", "model.dim_head=16",
              "model.alibi_num_heads=2", "model.max_seq_len=128"]


def run(workdir: Path, entry: str, *args: str, check: bool = True,
        cache: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPT4_LIGHTNING_CACHE": str(cache or workdir / "cache")}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-m", f"gpt4_lightning.{entry}", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def start(workdir: Path, *cli_args: str, script: list[str] | None = None) -> subprocess.Popen:
    """`python -m gpt4_lightning.train <cli_args>` (or `python <script...> <cli_args>`) started in the background,
    in a session of its own (so that `os.killpg` reaches every rank), its output piped."""
    env = {**os.environ, "GPT4_LIGHTNING_CACHE": str(workdir / "cache")}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = script or ["-m", "gpt4_lightning.train"]
    return subprocess.Popen([sys.executable, *cmd, *cli_args], cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def train_args(workdir: Path, max_steps: int) -> list[str]:
    return ["data=files", f"data.path={workdir / 'corpus.jsonl'}", "data.seq_len=64", "data.batch_size=8",
            "data.val_fraction=0.1", "tokenizer.vocab_size=512", *TINY_MODEL, f"trainer.max_steps={max_steps}",
            "trainer.val_check_interval=20", "trainer.limit_val_batches=4", "trainer.log_every_n_steps=5",
            "checkpoint.every_n_steps=20", "scheduler.warmup_steps=5", "optim.lr=3e-3", "run_name=tiny"]


def error_lines(text: str) -> list[str]:
    """The `error:` lines of a command's output."""
    return [line for line in text.splitlines() if line.startswith("error:")]


def logged_losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, train loss) rows of a run's metrics.csv, in the order logged (a resumed run's rows follow)."""
    with open(run_dir / "logs" / "metrics.csv") as f:
        return [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f) if r.get("train/loss")]


def step_losses(run_dir: Path) -> dict[int, float]:
    """step -> train loss; a step logged twice (before a kill and after the resume) keeps the later value."""
    return dict(logged_losses(run_dir))


def step_metric(run_dir: Path, key: str) -> dict[int, float]:
    """step -> the value of metric `key` in a run's metrics.csv (the later row where a step was logged twice)."""
    with open(run_dir / "logs" / "metrics.csv") as f:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}
