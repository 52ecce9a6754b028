"""The golden loss curve: a short deterministic CPU run whose per-step losses are kept in
tests/golden/loss_curve.json, so that a change to the model, the init, the optimizer or the data stream that moves
the curve is seen (tests/training/test_golden_curve.py). torchtitan keeps loss-curve references the same way.

The run: gpt4_tiny with a 512-token BPE, fp32, seed 1234, 60 steps of 8 x 64 tokens, warmup-cosine, on a corpus
this file generates (synthetic Python, so it is the same on every Python version, unlike the stdlib corpus),
with the torch threads fixed. Regenerate on purpose (after a change that is meant to move the curve; say why in
the commit):

    python tests/helpers/golden_curve.py --write        # runs it, writes tests/golden/loss_curve.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "loss_curve.json"  # tests/golden/
STEPS, THREADS = 60, 2
ARGS = ["model=gpt4_tiny", "model.num_tokens=512", "tokenizer.vocab_size=512", "precision=fp32", "seed=1234",
        "data=files", "data.seq_len=64", "data.batch_size=8", "data.val_fraction=0.05", f"trainer.max_steps={STEPS}",
        "trainer.accelerator=cpu", "trainer.val_check_interval=30", "trainer.limit_val_batches=4",
        "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "checkpoint.every_n_steps=1000",
        "scheduler=warmup_cosine", "scheduler.warmup_steps=10", "optim.lr=3e-3", "run_name=golden", "num_proc=1"]

NAMES = ["total", "count", "items", "value", "index", "node", "left", "right", "key", "size"]
OPS = ["+", "-", "*", "//", "%"]


def corpus_text(documents: int = 600) -> list[str]:
    """Deterministic synthetic Python (a 64-bit LCG, not `random`): small functions with loops and arithmetic."""
    state = 0x9E3779B97F4A7C15

    def draw(n: int) -> int:
        nonlocal state
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        return (state >> 33) % n

    docs = []
    for d in range(documents):
        a, b, c = NAMES[draw(10)], NAMES[draw(10)], NAMES[draw(10)]
        lines = [f"def f{d}({a}, {b}):", f"    {c} = 0", f"    for i in range({draw(20) + 1}):"]
        for _ in range(draw(4) + 1):
            lines.append(f"        {c} = {c} {OPS[draw(5)]} ({a} {OPS[draw(5)]} i) + {draw(100)}")
        lines += [f"    if {c} > {b}:", f"        return {c} {OPS[draw(5)]} {b}", f"    return {c}", ""]
        docs.append("\n".join(lines))
    return docs


def write_corpus(path: Path) -> Path:
    with open(path, "w") as f:
        for text in corpus_text():
            f.write(json.dumps({"text": text}) + "\n")
    return path


def environment() -> dict[str, Any]:
    """What the curve's exact values depend on besides the code: the same here gives bitwise-equal losses."""
    import torch

    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    # the vector ISA torch's kernels dispatch to (AVX2, AVX512, ...): the same CPU name can mean either
    return dict(torch=torch.__version__, cpu=cpu, cpu_capability=torch.backends.cpu.get_cpu_capability(),
                threads=THREADS)


def run_curve(workdir: Path, threads: int = THREADS) -> dict[int, float]:
    """Train the golden run in `workdir` (corpus and cache there), return step -> train loss."""
    corpus = write_corpus(workdir / "golden_corpus.jsonl")
    env = {**os.environ, "GPT4_LIGHTNING_CACHE": str(workdir / "cache"), "OMP_NUM_THREADS": str(threads)}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-m", "gpt4_lightning.train", *ARGS, f"data.path={corpus}"],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"the golden run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    with open(workdir / "outputs" / "golden" / "logs" / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help="write tests/golden/loss_curve.json (else print only)")
    p.add_argument("--threads", type=int, default=THREADS)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        losses = run_curve(Path(tmp), args.threads)
    print(" ".join(f"{s}:{v:.4f}" for s, v in sorted(losses.items())))
    if args.write:
        GOLDEN.parent.mkdir(exist_ok=True)
        record = dict(environment=environment(), args=ARGS, losses={str(s): v for s, v in sorted(losses.items())})
        GOLDEN.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
