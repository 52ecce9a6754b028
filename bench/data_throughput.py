"""Data pipeline throughput, side by side in one run.

Reading: the same train shards read (1) as a raw sequential `np.memmap` pass (the ceiling: copy
every token out of the page cache in 4M-token chunks), (1b) as the simplest memmap loader (the
same windows in file order, batched, int64 tensors) and (2) through `GPT4DataModule`'s train
loader (shuffled `seq_len + 1` windows, int64 batches) with 0 and 2 workers, also as a `data=mix` of 4 sources
(the same shards four times, weights 0.4/0.3/0.2/0.1: the mixture's own cost, same bytes read); tokens/s each and the
ratios, plus how many times faster than the model consumes tokens (`--train-tokens-per-s`, the
default run's measured rate).

Preparing: `prepare` (read, split, encode in parallel, write shards + manifest) with the corpus's own
tokenizer.json (`tokenizer=file`, so BPE training is not timed) against one plain
`Tokenizer.encode_batch` over the same documents in memory; MB/s of text each and the ratio.

    python bench/data_throughput.py                 # the stdlib corpus (prepared once, cached)
    python bench/data_throughput.py --out /tmp/d.json --seq-len 256 --batch-size 8
    python bench/data_throughput.py --skip-prepare --baseline-tree /tmp/base   # before/after, one run

`--baseline-tree DIR` (another checkout of this repository, e.g. `git worktree add /tmp/base <rev>`) adds
that tree's `GPT4DataModule` as rows `baseline_datamodule_*`, read in the same run (in a process of its
own with that tree first on PYTHONPATH), and a `vs baseline` column (best pass against best pass; the JSON
adds the median over passes of the ratio within each turn): a before/after comparison that machine noise
between runs cannot blur.

Each reader row is the best of `--repeat` passes (default 5), the readers taking turns pass by pass (in
forward, then reverse order), so a burst of load on a shared machine hits every row alike and the ratios
hold (one pass of the stdlib corpus is ~0.5 s; single passes varied by +-30 % on the 2-core VM).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine_info import machine_info
from tokenizers import Tokenizer

from gpt4_lightning.config import compose_config
from gpt4_lightning.data.prepare.corpus import Corpus
from gpt4_lightning.data.prepare.pipeline import prepare
from gpt4_lightning.data.shards import Manifest
from gpt4_lightning.data.stream.datamodule import GPT4DataModule
from gpt4_lightning.data.stream.mixture import Source

REPO = Path(__file__).resolve().parent.parent


def raw_memmap_read(data_dir: Path, manifest: Manifest, chunk: int = 1 << 22) -> tuple[int, float]:
    start, tokens = time.perf_counter(), 0
    for mm in manifest.memmaps(data_dir, "train"):
        for i in range(0, len(mm), chunk):
            tokens += len(np.array(mm[i : i + chunk]))  # copy out, as a loader must
    return tokens, time.perf_counter() - start


def raw_memmap_windows(data_dir: Path, manifest: Manifest, seq_len: int, batch_size: int) -> tuple[int, float]:
    """The simplest loader over the same shards: the same windows in file order, batched, as int64
    tensors, straight from `np.memmap` (no shuffle, no state, no DataLoader)."""
    start, tokens = time.perf_counter(), 0
    for mm in manifest.memmaps(data_dir, "train"):
        n = (len(mm) - 1) // seq_len
        for first in range(0, n - batch_size + 1, batch_size):
            lo = first * seq_len
            rows = [mm[lo + j * seq_len : lo + j * seq_len + seq_len + 1] for j in range(batch_size)]
            tokens += torch.from_numpy(np.stack(rows).astype(np.int64)).numel()
    return tokens, time.perf_counter() - start


BASELINE_READ = """
import json, sys, time
try:
    from gpt4_lightning.data.stream.datamodule import GPT4DataModule
except ImportError:  # a tree from before data/ was split into prepare/ and stream/
    from gpt4_lightning.data.datamodule import GPT4DataModule
data_dir, seq_len, batch_size, workers, max_batches = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5]
max_batches = None if max_batches == "none" else int(max_batches)
datamodule = GPT4DataModule(data_dir, seq_len=seq_len, batch_size=batch_size, num_workers=workers)
datamodule.setup("fit")
iterator = iter(datamodule.make_train_loader())
next(iterator)
start, tokens = time.perf_counter(), 0
for i, batch in enumerate(iterator):
    if max_batches is not None and i >= max_batches:
        break
    tokens += batch.numel()
print(json.dumps([tokens, time.perf_counter() - start]))
"""


def baseline_read(tree: Path, data_dir: Path, seq_len: int, batch_size: int, num_workers: int,
                  max_batches: int | None) -> tuple[int, float]:
    """`loader_read` with the `GPT4DataModule` of the checkout at `tree`, in a process of its own whose
    `gpt4_lightning` is that tree's (PYTHONPATH first); timed inside it, so start-up is not counted."""
    if not (tree / "gpt4_lightning" / "__init__.py").is_file():
        raise SystemExit(f"error: --baseline-tree {tree} has no gpt4_lightning package")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", BASELINE_READ, str(data_dir), str(seq_len), str(batch_size),
                          str(num_workers), "none" if max_batches is None else str(max_batches)],
                         env=env, cwd=tree, capture_output=True, text=True, check=True).stdout
    tokens, seconds = json.loads(out.strip().splitlines()[-1])
    return tokens, seconds


def loader_read(data_dir: Path, seq_len: int, batch_size: int, num_workers: int,
                max_batches: int | None,
                sources: list[Source] | None = None) -> tuple[int, float]:
    kwargs = {"sources": sources} if sources else {}
    datamodule = GPT4DataModule(data_dir, seq_len=seq_len, batch_size=batch_size, num_workers=num_workers,
                                  **kwargs)
    datamodule.setup("fit")
    loader = datamodule.make_train_loader()
    iterator = iter(loader)
    first = next(iterator)  # worker start-up is not throughput
    start, tokens = time.perf_counter(), 0
    for i, batch in enumerate(iterator):
        if max_batches is not None and i >= max_batches:
            break
        tokens += batch.numel()
    del first
    return tokens, time.perf_counter() - start


def prepare_vs_encode_batch(data_dir: Path, manifest: Manifest) -> dict[str, float]:
    cfg = compose_config("prepare")
    documents = list(Corpus(cfg.data))
    text_mb = sum(len(d.encode("utf-8")) for d in documents) / 1e6
    tokenizer = Tokenizer.from_file(str(data_dir / manifest.tokenizer_file))
    start = time.perf_counter()
    tokenizer.encode_batch(documents)
    plain = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config("prepare", ["tokenizer=file", f"tokenizer.path={data_dir / manifest.tokenizer_file}",
                                         f"data.dir={tmp}", "overwrite=true"])
        start = time.perf_counter()
        prepare(cfg)
        ours = time.perf_counter() - start
    return {"text_mb": text_mb, "prepare_mb_per_s": text_mb / ours, "encode_batch_mb_per_s": text_mb / plain,
            "prepare_s": ours, "encode_batch_s": plain}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-batches", type=int, default=None, help="per loader run (default: a whole epoch)")
    p.add_argument("--train-tokens-per-s", type=float, default=3600.0,
                   help="what training consumes (gpt4_tiny default run on this CPU, see BENCHMARKS.md)")
    p.add_argument("--repeat", type=int, default=5, help="passes per reader; the best is reported")
    p.add_argument("--baseline-tree", type=Path, default=None,
                   help="another checkout whose DataModule is read in the same run (rows baseline_*)")
    p.add_argument("--skip-prepare", action="store_true", help="do not time prepare against encode_batch")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="read this prepared directory (default: the stdlib corpus, prepared once and cached)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "data_throughput.json")
    args = p.parse_args()

    data_dir = args.data_dir or prepare(compose_config("prepare"))  # the stdlib corpus, cached
    manifest = Manifest.load(data_dir)
    readers = {
        "raw_memmap_sequential": lambda: raw_memmap_read(data_dir, manifest),
        "raw_memmap_windows": lambda: raw_memmap_windows(data_dir, manifest, args.seq_len, args.batch_size),
        **{f"datamodule_{w}_workers": (lambda w=w: loader_read(data_dir, args.seq_len, args.batch_size, w,
                                                               args.max_batches)) for w in (0, 2)},
    }
    mix4 = [Source(f"s{i}", data_dir, w) for i, w in enumerate((0.4, 0.3, 0.2, 0.1))]  # the same shards, 4 ways
    single = GPT4DataModule(data_dir, seq_len=args.seq_len, batch_size=args.batch_size)
    single.setup()
    one_epoch = args.max_batches or single.train_windows.num_windows // args.batch_size - 1  # as many batches
    for w in (0, 2):
        readers[f"datamodule_mix4_{w}_workers"] = (
            lambda w=w: loader_read(data_dir, args.seq_len, args.batch_size, w, one_epoch, sources=mix4))
    if args.baseline_tree is not None:
        tree = args.baseline_tree.resolve()
        for w in (0, 2):
            readers[f"baseline_datamodule_{w}_workers"] = (
                lambda w=w: baseline_read(tree, data_dir, args.seq_len, args.batch_size, w, args.max_batches))
    passes: dict[str, list[tuple[int, float]]] = {name: [] for name in readers}
    turn = list(readers.items())
    for i in range(args.repeat):  # forward, then backward (ABBA): a reader's place in the turn (what ran just
        for name, read in turn if i % 2 == 0 else turn[::-1]:  # before it) moved a 2-worker row by 10 %
            passes[name].append(read())
    rows: dict[str, dict[str, float]] = {}
    for name, results in passes.items():
        tokens, seconds = min(results, key=lambda r: r[1])
        rows[name] = {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                      "pass_seconds": [r[1] for r in results]}
    raw, raw_windows = rows["raw_memmap_sequential"]["tokens_per_s"], rows["raw_memmap_windows"]["tokens_per_s"]
    for row in rows.values():
        row["vs_raw"] = row["tokens_per_s"] / raw
        row["vs_raw_windows"] = row["tokens_per_s"] / raw_windows
        row["vs_training"] = row["tokens_per_s"] / args.train_tokens_per_s
    for w in (0, 2):
        ours, mixed = rows[f"datamodule_{w}_workers"], rows[f"datamodule_mix4_{w}_workers"]
        mixed["vs_single_source"] = mixed["tokens_per_s"] / ours["tokens_per_s"]
        if f"baseline_datamodule_{w}_workers" in rows:
            ours, theirs = rows[f"datamodule_{w}_workers"], rows[f"baseline_datamodule_{w}_workers"]
            ours["vs_baseline"] = ours["tokens_per_s"] / theirs["tokens_per_s"]  # best pass / best pass
            paired = [b / a for a, b in zip(ours["pass_seconds"], theirs["pass_seconds"], strict=True)]
            ours["vs_baseline_paired_median"] = statistics.median(paired) * ours["tokens"] / theirs["tokens"]

    print(f"data: {data_dir}  ({manifest.num_tokens('train'):,} train tokens, seq_len {args.seq_len}, "
          f"batch {args.batch_size})")
    print(f"{'reader':<34}{'tokens/s':>16}{'vs raw':>10}{'vs raw windows':>16}{'vs training':>14}{'vs baseline':>13}")
    for name, row in rows.items():
        vs_baseline = f"{row['vs_baseline']:>13.3f}" if "vs_baseline" in row else ""
        if "vs_single_source" in row:
            vs_baseline = f"{row['vs_single_source']:>13.3f} (vs one source)"
        print(f"{name:<34}{row['tokens_per_s']:>16,.0f}{row['vs_raw']:>10.3f}{row['vs_raw_windows']:>16.3f}"
              f"{row['vs_training']:>14,.0f}{vs_baseline}")
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result = {"config": config, "data_dir": str(data_dir), "read": rows,
              "machine": machine_info()}
    if not args.skip_prepare and args.data_dir is None:
        prep = prepare_vs_encode_batch(data_dir, manifest)
        result["prepare"] = prep
        print(f"{'writer':<26}{'MB/s of text':>16}{'ratio':>10}")
        print(f"{'prepare (tokenizer=file)':<26}{prep['prepare_mb_per_s']:>16.2f}"
              f"{prep['prepare_mb_per_s'] / prep['encode_batch_mb_per_s']:>10.3f}")
        print(f"{'Tokenizer.encode_batch':<26}{prep['encode_batch_mb_per_s']:>16.2f}{1.0:>10.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
