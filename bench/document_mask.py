"""Document masking's per-batch FlexAttention block mask: torch's `create_block_mask` eager vs compiled.

The question it answers: what does building the block mask cost per step, and does it grow as n²? Eager,
`create_block_mask` materialises the whole `(b, 1, n, n)` mask and the ids gathered to it; compiled
(`model.kernels.block_mask_builder(True)`, what CUDA runs) it fuses into the blocks' bitmap. Each case runs in
its own process (peak RSS is per process): the same document ids (an EOS every `--document-len` tokens),
one warm-up call (compiled: the compile, at the same shape; eager: at n 128), then the median of `--iters`
calls. Reported: ms per call, the peak RSS the calls add over the warm process (0: below the high-water mark the
compile left), and compiled / eager ratios. On CUDA add `--device cuda` (peak: CUDA's
allocator, not RSS).

    python bench/document_mask.py                    # b 1, n 2048 and 8192, on CPU
    python bench/document_mask.py --quick            # n 256, for tests
    python bench/document_mask.py --seq 8192 32768 --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from machine_info import machine_info, write_report

REPO = Path(__file__).resolve().parent.parent
MODES = ("eager", "compiled")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--document-len", type=int, default=512)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="n 256, 2 iterations (for tests)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "document_mask.json")
    p.add_argument("--worker", nargs=2, metavar=("MODE", "SEQ"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.seq, args.iters, args.document_len = [256], 2, 64
    return args


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(args: argparse.Namespace) -> dict[str, float]:
    from gpt4_lightning.model.kernels import document_block_mask, document_ids

    mode, n = args.worker[0], int(args.worker[1])
    device = torch.device(args.device)
    tokens = torch.ones(args.batch, n, dtype=torch.long, device=device)
    tokens[:, args.document_len - 1::args.document_len] = 0  # EOS id 0
    documents = document_ids(tokens, 0)
    # warm-up: compiled, the compile at this shape; eager, a small one (so the peak of this shape is not in it)
    document_block_mask(documents if mode == "compiled" else documents[:, :128], compiled=mode == "compiled")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    base = peak_bytes(device)
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        document_block_mask(documents, compiled=mode == "compiled")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    added = peak_bytes(device) - (0 if device.type == "cuda" else base)
    return {"ms": statistics.median(times) * 1e3, "added_peak_mib": added / 2**20}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    results: dict[str, dict[str, Any]] = {}
    print(f"{'seq':>7}{'mode':>10}{'ms/call':>10}{'+peak MiB':>11}")
    for n in args.seq:
        for mode in MODES:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, str(n), "--batch",
                   str(args.batch), "--document-len", str(args.document_len), "--iters", str(args.iters),
                   "--device", args.device]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if proc.returncode != 0:
                raise SystemExit(f"error: the {mode} worker at seq {n} failed:\n{proc.stderr[-2000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            results[f"{mode}_{n}"] = row
            print(f"{n:>7}{mode:>10}{row['ms']:>10.2f}{row['added_peak_mib']:>11.1f}")
    ratios = {f"compiled_vs_eager_ms_{n}": results[f"compiled_{n}"]["ms"] / results[f"eager_{n}"]["ms"]
              for n in args.seq}
    for n in args.seq:
        print(f"seq {n}: compiled takes {ratios[f'compiled_vs_eager_ms_{n}']:.3f}x the eager time")
    config = {k: getattr(args, k) for k in ("seq", "batch", "document_len", "iters", "device")}
    write_report(args.out, dict(config=config, machine=machine_info(torch.device(args.device)), results=results,
                                ratios=ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
