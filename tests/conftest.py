import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # test helpers (xt_reference)

# A tiny GPT4 with every seed flag at its default (ALiBi on half the heads, rotary-xPos, MQA, qk-norm).
TINY = dict(num_tokens=256, max_seq_len=128, dim=64, depth=2, dim_head=16, heads=4, alibi_num_heads=2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def perturb_(model: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Move gains, biases and qk dim-scales off their init so parity tests exercise them (the qk-norm
    temperature stays at 10: x-transformers holds it fixed)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(key in name for key in ("gamma", "scale", "bias")):
                p.add_(torch.randn_like(p) * std)
    return model


# --- end-to-end CLI runs (subprocesses) ---------------------------------------------------------

TINY_MODEL = ["model.num_tokens=512", "model.dim=64", "model.depth=2", "model.heads=4", "model.dim_head=16",
              "model.alibi_num_heads=2", "model.max_seq_len=128"]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    """A small real corpus (60 stdlib modules as jsonl) and a cache dir shared by the CLI tests."""
    from gpt4_lightning.data.prepare.corpus import stdlib_files

    root = tmp_path_factory.mktemp("cli")
    with open(root / "corpus.jsonl", "w") as f:
        for path in stdlib_files()[:60]:
            text = path.read_text(encoding="utf-8", errors="replace")
            f.write(json.dumps({"text": text}) + "\n")
    return root


def run(workdir: Path, entry: str, *args: str, check: bool = True,
        cache: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPT4_LIGHTNING_CACHE": str(cache or workdir / "cache")}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-m", f"gpt4_lightning.{entry}", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def train_args(workdir: Path, max_steps: int) -> list[str]:
    return ["data=files", f"data.path={workdir / 'corpus.jsonl'}", "data.seq_len=64", "data.batch_size=8",
            "data.val_fraction=0.1", "tokenizer.vocab_size=512", *TINY_MODEL, f"trainer.max_steps={max_steps}",
            "trainer.val_check_interval=20", "trainer.limit_val_batches=4", "trainer.log_every_n_steps=5",
            "checkpoint.every_n_steps=20", "scheduler.warmup_steps=5", "optim.lr=3e-3", "run_name=tiny"]


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

# --- a real one-node Slurm cluster (tests/slurm_cluster.py; tests/test_slurm.py) --------------------------


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """munged + slurmctld + slurmd on this machine with a private config (SLURM_CONF in `slurm.env`), up for the
    whole session; skipped where Slurm/munge are not installed or we are not root."""
    from slurm_cluster import SlurmCluster, unavailable

    reason = unavailable()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def mix_args(workdir) -> Callable[[list[str]], list[str]]:
    """Two prepared sources with one tokenizer — web (the corpus's first 45 documents) and code (the other 15) —
    and a function turning `train_args` into the same run on `data=mix` of them at 0.75/0.25."""
    lines = (workdir / "corpus.jsonl").read_text().splitlines(keepends=True)
    web, code = workdir / "mix" / "web", workdir / "mix" / "code"
    for path, part in ((workdir / "mix_web.jsonl", lines[:45]), (workdir / "mix_code.jsonl", lines[45:])):
        path.write_text("".join(part))
    run(workdir, "prepare", "data=files", f"data.path={workdir / 'mix_web.jsonl'}", f"data.dir={web}",
        "tokenizer.vocab_size=512", "data.val_fraction=0.1")
    run(workdir, "prepare", "data=files", f"data.path={workdir / 'mix_code.jsonl'}", f"data.dir={code}",
        "tokenizer=file", f"tokenizer.path={web / 'tokenizer.json'}", "data.val_fraction=0.1")
    sources = f"data.sources=[{{name:web,dir:{web},weight:0.75}},{{name:code,dir:{code},weight:0.25}}]"

    def on_mix(args: list[str]) -> list[str]:
        return [a for a in args if not a.startswith(("data=", "data.path="))] + ["data=mix", sources]
    return on_mix


@pytest.fixture(scope="session")
def tiny_checkpoint(workdir) -> Path:
    """A plain checkpoint of the tiny model after 8 steps (its prepared data in the workdir cache)."""
    run(workdir, "train", *train_args(workdir, 8), "run_name=tiny_checkpoint", "trainer.limit_val_batches=0")
    return workdir / "outputs" / "tiny_checkpoint" / "checkpoints" / "last.ckpt"
