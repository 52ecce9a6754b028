"""Data at pretraining scale: start-up, memory, open files and loader speed from 1e9 to 1e13 tokens.

Builds synthetic prepared directories with the project's own manifest code and sparse shard files (real sizes,
no disk used: every token reads as 0) at the default `data.shard_tokens`, then measures for each, in a fresh
process under `ulimit -n 1024`:

- `python -m gpt4_lightning.train data.dir=<dir>` for one optimizer step (tiny model, no validation): wall time
  from start to exit (an upper bound of start-to-first-step), peak RSS, the most file descriptors any process
  of the run held at once; 1 and 2 ranks (DDP, gloo);
- the DataModule's train loader alone: batches/s with `num_workers` 0 and 2, and its open files.

    python bench/data_scale.py                          # 1e9 1e11 1e12 1e13 tokens
    python bench/data_scale.py --tokens 1e9 1e11 --out /tmp/scale.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from machine_info import machine_info

REPO = Path(__file__).resolve().parent.parent
SHARD_TOKENS = 16_777_216  # the default data.shard_tokens
VOCAB = 512
TINY = ["model.num_tokens=512", "model.dim=64", "model.depth=2", "model.heads=4", "model.dim_head=16",
        "model.alibi_num_heads=2", "model.max_seq_len=256"]


def build(root: Path, tokens: int) -> Path:
    """A prepared directory of `tokens` train tokens (plus one val shard) in sparse shards, made once."""
    from tokenizers import Tokenizer, models

    from gpt4_lightning.data.shards import Manifest, SplitShards
    from gpt4_lightning.utils.files import sha256_file

    out = root / f"sparse-{tokens:.0e}".replace("+", "")
    if (out / "manifest.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.WordLevel({"<|endoftext|>": 0, **{f"t{i}": i for i in range(1, VOCAB)}},
                                           unk_token="<|endoftext|>"))
    tokenizer.save(str(out / "tokenizer.json"))
    def split(name: str, sizes: list[int]) -> SplitShards:
        shards = SplitShards(name, sizes)
        digests = {}
        for i, n in enumerate(sizes):
            with open(out / shards.file(i), "wb") as f:
                f.truncate(2 * n)  # sparse: no blocks written
            if n not in digests:
                digests[n] = sha256_file(out / shards.file(i))
        return SplitShards(name, sizes, [digests[n] for n in sizes])

    full, rest = divmod(tokens, SHARD_TOKENS)
    Manifest("uint16", VOCAB, 0, "tokenizer.json", sha256_file(out / "tokenizer.json"),
             {"train": split("train", [SHARD_TOKENS] * full + ([rest] if rest else [])),
              "val": split("val", [1 << 20])}, source={"name": "sparse", "fingerprint": "synthetic"}).save(out)
    return out


def process_tree(pid: int) -> list[int]:
    found, frontier = [pid], [pid]
    while frontier:
        children = []
        for p in frontier:
            with contextlib.suppress(OSError):
                children += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        found += children
        frontier = children
    return found


def open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def measured_run(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run `cmd` under `ulimit -n 1024`; wall seconds, peak RSS of the tree's largest process, most fds held."""
    start = time.perf_counter()
    proc = subprocess.Popen(["bash", "-c", 'ulimit -n 1024 && exec "$@"', "bash", *cmd], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    most, done = 0, threading.Event()

    def sample() -> None:
        nonlocal most
        while not done.is_set():
            most = max([most, *(open_files(p) for p in process_tree(proc.pid))])
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{output[-3000:]}")
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024, "max_open_files": most}


def train_once(data_dir: Path, ranks: int, workdir: Path) -> dict[str, float]:
    args = [f"data.dir={data_dir}", "data.seq_len=256", "data.batch_size=4", *TINY, "trainer.max_steps=1",
            "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false", "logger=none",
            f"hydra.run.dir={workdir / f'{data_dir.name}-{ranks}'}"]
    if ranks > 1:
        args += ["trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={ranks}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return measured_run([sys.executable, "-m", "gpt4_lightning.train", *args], env)


LOADER = """
import json, os, sys, time
from gpt4_lightning.data.stream.datamodule import GPT4DataModule
dm = GPT4DataModule(sys.argv[1], seq_len=256, batch_size=8, num_workers=int(sys.argv[2]))
loader = dm.make_train_loader()
batches = iter(loader)
next(batches)  # workers started, first batch read
start = time.perf_counter()
for _ in range(int(sys.argv[3])):
    next(batches)
seconds = time.perf_counter() - start
print(json.dumps({"batches_per_s": int(sys.argv[3]) / seconds}))
"""


def loader_speed(data_dir: Path, workers: int, batches: int) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run(["bash", "-c", 'ulimit -n 1024 && exec "$@"', "bash", sys.executable, "-c", LOADER,
                           str(data_dir), str(workers), str(batches)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return {**json.loads(proc.stdout.splitlines()[-1]), "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", nargs="+", type=float, default=[1e9, 1e11, 1e12, 1e13])
    p.add_argument("--root", type=Path, default=Path("/tmp/gpt4l-data-scale"))
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--ranks", nargs="+", type=int, default=[1, 2])
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "data_scale.json")
    args = p.parse_args(argv)
    rows = []
    for tokens in map(int, args.tokens):
        started = time.perf_counter()
        data_dir = build(args.root, tokens)
        row = {"tokens": tokens, "shards": len(list(data_dir.glob("train_*.bin"))),
               "build_s": time.perf_counter() - started}
        for ranks in args.ranks:
            row[f"train_{ranks}rank"] = train_once(data_dir, ranks, args.root / "runs")
        for workers in (0, 2):
            row[f"loader_{workers}w"] = loader_speed(data_dir, workers, args.batches)
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]
    print(f"\n| tokens | shards | ranks | start→exit s | ×{base['tokens']:.0e} | peak RSS MiB | max open files |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        for ranks in args.ranks:
            r, b = row[f"train_{ranks}rank"], base[f"train_{ranks}rank"]
            print(f"| {row['tokens']:.0e} | {row['shards']} | {ranks} | {r['seconds']:.1f} | "
                  f"{r['seconds'] / b['seconds']:.2f} | {r['peak_rss_mib']:.0f} | {r['max_open_files']} |")
    print("\n| tokens | loader batches/s, 0 workers | 2 workers |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['tokens']:.0e} | {row['loader_0w']['batches_per_s']:.0f} | "
              f"{row['loader_2w']['batches_per_s']:.0f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine_info(), "shard_tokens": SHARD_TOKENS, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
