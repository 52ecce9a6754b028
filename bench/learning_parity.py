"""Does GPT4 learn as well as its lineage? Held-out loss of ours vs x-transformers, same everything.

Same data (byte-level Python source of this interpreter's standard library: every 25th file held out), same
batches in the same order, same optimizer (AdamW, constant lr per width, no clipping), same steps, the same seed before
each model is built; the models have the same seed flags (x-transformers built by tests/helpers/xt_reference.py from the
GPT4Config). Each model initialises itself as its library does. Reported per width: the held-out loss (nats per
byte) at the training length and at 4x that length (the extrapolation of ALiBi + rotary-xPos), mean and spread
over seeds, and the ratio ours / theirs per seed and its mean ± standard deviation.

Run from the repo root:
    python bench/learning_parity.py                     # dims 128 and 512, 3 seeds, 300 steps (~40 min here)
    python bench/learning_parity.py --quick             # tiny, seconds (tests)
    python bench/learning_parity.py --dims 128 --seeds 0 1 2 3 4 --steps 1000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from machine_info import machine_info, write_report
from torch import Tensor, nn

from gpt4_lightning import GPT4, GPT4Config

REPO = Path(__file__).resolve().parent.parent
MODELS = ("gpt4", "x_transformers")
HELD_OUT_EVERY = 25  # every 25th stdlib file (sorted) is held out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", type=int, nargs="+", default=[128, 512], help="model widths (dim_head 32 at 128, "
                   "64 above; heads = dim / dim_head; ALiBi on half the heads)")
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seq", type=int, default=128, help="training length (the models' max_seq_len)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 5e-4],
                   help="AdamW lr per width, in --dims order (both models take the same; GPT-3's table gives 6e-4 at "
                   "dim 768, and 1e-3 at dim 512 is past what either model trains smoothly at here)")
    p.add_argument("--eval-windows", type=int, default=64, help="held-out windows per length")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="dim 32, 1 seed, 3 steps (for tests)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "learning_parity.json")
    args = p.parse_args(argv)
    if args.quick:
        args.dims, args.seeds, args.steps, args.seq, args.batch, args.eval_windows = [32], [0], 3, 32, 2, 4
    if len(args.lrs) < len(args.dims):
        p.error(f"--lrs: one lr per width ({len(args.dims)}), got {len(args.lrs)}")
    return args


def model_config(dim: int, depth: int, seq: int) -> GPT4Config:
    dim_head = 32 if dim <= 128 else 64
    heads = max(dim // dim_head, 2)
    return GPT4Config(num_tokens=256, max_seq_len=seq, dim=dim, depth=depth, dim_head=dim_head, heads=heads,
                      alibi_num_heads=heads // 2)


def stdlib_bytes() -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) byte arrays: the stdlib's .py files in sorted order, every HELD_OUT_EVERY-th held out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    train, held = [], []
    for i, path in enumerate(files):
        (held if i % HELD_OUT_EVERY == 0 else train).append(path.read_bytes())
    return (np.frombuffer(b"".join(train), dtype=np.uint8), np.frombuffer(b"".join(held), dtype=np.uint8))


def windows(data: np.ndarray, count: int, length: int, generator: np.random.Generator) -> Tensor:
    """`count` random windows of `length + 1` bytes: `(count, length + 1)` int64."""
    starts = generator.integers(0, len(data) - length - 1, size=count)
    return torch.from_numpy(np.stack([data[s:s + length + 1] for s in starts]).astype(np.int64))


def xt_reference() -> Any:
    """tests/helpers/xt_reference.py, which builds x-transformers with a GPT4Config's arguments."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.helpers import xt_reference

    return xt_reference


def build(name: str, cfg: GPT4Config, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return GPT4.from_config(cfg) if name == "gpt4" else xt_reference().build_xtransformers(cfg)


def next_byte_loss(model: nn.Module, tokens: Tensor) -> Tensor:
    """The same loss code for both models: cross-entropy of `model(tokens[:, :-1])` against `tokens[:, 1:]`."""
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


@torch.no_grad()
def held_out_loss(model: nn.Module, held: Tensor, batch: int) -> float:
    model.eval()
    total = sum(next_byte_loss(model, held[i:i + batch]).item() * len(held[i:i + batch])
                for i in range(0, len(held), batch))
    model.train()
    return total / len(held)


def train_and_eval(name: str, cfg: GPT4Config, seed: int, lr: float, train: np.ndarray, held: dict[int, Tensor],
                   args: argparse.Namespace) -> dict[str, Any]:
    model = build(name, cfg, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    batches = np.random.default_rng(seed)  # the same batches, in the same order, for both models
    start = time.perf_counter()
    first_loss = None
    for _ in range(args.steps):
        loss = next_byte_loss(model, windows(train, args.batch, args.seq, batches))
        first_loss = loss.item() if first_loss is None else first_loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    train_s = time.perf_counter() - start
    losses = {str(n): held_out_loss(model, w, max(1, args.batch * args.seq // n)) for n, w in held.items()}
    return dict(first_train_loss=first_loss, last_train_loss=loss.item(), held_out=losses, train_s=train_s,
                params=sum(p.numel() for p in model.parameters()))


def spread(values: list[float]) -> dict[str, float]:
    return dict(mean=statistics.fmean(values), std=statistics.stdev(values) if len(values) > 1 else 0.0,
                min=min(values), max=max(values))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train, held_bytes = stdlib_bytes()
    lengths = (args.seq, 4 * args.seq)
    held = {n: windows(held_bytes, args.eval_windows, n, np.random.default_rng(12345)) for n in lengths}
    print(f"data: {len(train) / 1e6:.1f} MB train, {len(held_bytes) / 1e6:.1f} MB held out; lengths {lengths}",
          flush=True)
    runs: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for dim, lr in zip(args.dims, args.lrs, strict=False):
        cfg = model_config(dim, args.depth, args.seq)
        for seed in args.seeds:
            for name in MODELS:
                result = train_and_eval(name, cfg, seed, lr, train, held, args)
                runs.append(dict(model=name, dim=dim, seed=seed, lr=lr, **result))
                print(f"dim {dim} seed {seed} {name:<15} held-out " + " ".join(
                    f"@{n}: {v:.4f}" for n, v in result["held_out"].items()) +
                    f"  (first train loss {result['first_train_loss']:.3f}, {result['train_s']:.0f} s)", flush=True)

    summary: dict[str, Any] = {}
    for dim in args.dims:
        per_len: dict[str, Any] = {}
        for n in map(str, lengths):
            by_model = {m: [r["held_out"][n] for r in runs if r["dim"] == dim and r["model"] == m] for m in MODELS}
            ratios = [a / b for a, b in zip(by_model["gpt4"], by_model["x_transformers"], strict=True)]
            per_len[n] = dict(gpt4=spread(by_model["gpt4"]), x_transformers=spread(by_model["x_transformers"]),
                              ratio_per_seed=ratios, ratio=spread(ratios),
                              ratio_of_means=statistics.fmean(by_model["gpt4"])
                              / statistics.fmean(by_model["x_transformers"]))
        summary[str(dim)] = per_len

    header = (f"{'dim':>5}{'length':>8}{'gpt4 mean ± sd':>20}{'x-transformers':>20}{'ratio of means':>16}"
              f"{'ratio ± sd':>18}")
    print(header)
    print("-" * len(header))
    for dim, per_len in summary.items():
        for n, s in per_len.items():
            g, x, r = s["gpt4"], s["x_transformers"], s["ratio"]
            print(f"{dim:>5}{n:>8}{g['mean']:>12.4f} ± {g['std']:.4f}{x['mean']:>12.4f} ± {x['std']:.4f}"
                  f"{s['ratio_of_means']:>16.4f}{r['mean']:>10.4f} ± {r['std']:.4f}")
    wall = time.perf_counter() - t0
    print(f"wall time: {wall:.0f}s")
    config = {k: getattr(args, k) for k in ("dims", "depth", "seeds", "steps", "seq", "batch", "lrs", "eval_windows")}
    report = dict(config=config, machine=machine_info(), runs=runs, summary=summary, wall_s=wall)
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
