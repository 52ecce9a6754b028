"""CPU training throughput of GPT4 against x-transformers, side by side in one run.

Measures, per model, training tokens/s (forward + backward + AdamW step + zero_grad on one fixed
random batch, tokens counted as batch * seq, after warm-up steps) and the peak RSS increase over
the RSS right before the model is built. Each measurement runs in a fresh subprocess (the script
re-invokes itself with `--worker NAME`), so peaks do not leak between models. The model order is
rotated/reversed across rounds to cancel drift; the median tokens/s over rounds is reported.

Models:
    gpt4           `gpt4_lightning.GPT4`, loss = cross_entropy(logits.flatten(0, 1), targets.flatten())
    xt_model       x-transformers `TransformerWrapper(Decoder(...))`, same arguments, same loss code
    xt_arwrapper   x-transformers `AutoregressiveWrapper(xt_model)`: forward(tokens (b, n + 1)) -> loss
    gpt4_compiled  (--compile) GPT4 with each decoder block wrapped in `torch.compile`
    gpt4_document_mask  (--document-mask) GPT4 with document masking (`data.document_mask`): an EOS every
                   `--document-len` tokens, the per-batch dense mask on CPU (FlexAttention's block mask on CUDA)

Run from the repo root:
    python bench/model_throughput.py                  # defaults: dim 256, depth 4, seq 512, batch 8
    python bench/model_throughput.py --quick          # tiny config, for tests
    python bench/model_throughput.py --compile --rounds 5 --out /tmp/r.json
    python bench/model_throughput.py --document-mask       # + the cost of document masking
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from machine_info import machine_info, write_report
from torch import Tensor, nn
from x_transformers import AutoregressiveWrapper

from gpt4_lightning import GPT4, GPT4Config
from gpt4_lightning.memory.rss import current_rss, peak_rss
from gpt4_lightning.model.kernels import document_ids

REPO = Path(__file__).resolve().parent.parent
MODELS = ("gpt4", "xt_model", "xt_arwrapper")
CONFIG_KEYS = ("dim", "depth", "heads", "dim_head", "alibi_num_heads", "num_tokens", "seq", "batch")
QUICK = dict(dim=64, depth=2, heads=4, dim_head=16, alibi_num_heads=2, num_tokens=256, seq=64, batch=2,
             rounds=1, steps=2, warmup=1, document_len=16)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for key, default in dict(dim=256, depth=4, heads=8, dim_head=32, alibi_num_heads=4, num_tokens=4096,
                             seq=512, batch=8, rounds=3, steps=5, warmup=2).items():
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, default=default)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: cpu count)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="also run gpt4_compiled (torch.compile per block)")
    p.add_argument("--document-mask", action="store_true", help="also run gpt4_document_mask")
    p.add_argument("--document-len", type=int, default=128, help="tokens per document with --document-mask")
    p.add_argument("--quick", action="store_true", help="tiny config, 1 round, 2 steps (for tests)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "model_throughput.json")
    p.add_argument("--worker", choices=(*MODELS, "gpt4_compiled", "gpt4_document_mask"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    args.threads = args.threads or os.cpu_count() or 1
    return args


def xt_reference() -> Any:
    """tests/helpers/xt_reference.py, which builds x-transformers with a GPT4Config's arguments."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.helpers import xt_reference

    return xt_reference


def busy_cpu_s() -> float:
    """CPU seconds spent by every process on the machine (non-idle jiffies in /proc/stat)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def build(name: str, args: argparse.Namespace) -> tuple[nn.Module, Any]:
    """-> (module to optimise, step_loss(tokens (b, n + 1)) -> scalar loss)."""
    kwargs = dict(num_tokens=args.num_tokens, max_seq_len=args.seq, dim=args.dim, depth=args.depth,
                  dim_head=args.dim_head, heads=args.heads, alibi_num_heads=args.alibi_num_heads)

    def next_token_loss(model: nn.Module, eos: int | None = None):
        def step_loss(tokens: Tensor) -> Tensor:  # "the same loss code" for gpt4, its masked run and xt_model
            documents = None
            if eos is not None:  # the LightningModule's document masking: ids from the EOS positions
                tokens = tokens.clone()
                tokens[:, args.document_len - 1::args.document_len] = eos
                documents = document_ids(tokens[:, :-1], eos)
            logits = model(tokens[:, :-1]) if documents is None else model(tokens[:, :-1], documents)
            return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        return step_loss

    if name.startswith("gpt4"):
        model = GPT4(**kwargs)
        if name == "gpt4_compiled":
            for i, block in enumerate(model.blocks):
                model.blocks[i] = torch.compile(block)
        return model, next_token_loss(model, eos=0 if name == "gpt4_document_mask" else None)

    # the config GPT4(**kwargs) would hold, without allocating a GPT4 in this worker (it would count as peak)
    xt = xt_reference().build_xtransformers(GPT4Config.from_kwargs(**kwargs))
    if name == "xt_model":
        return xt, next_token_loss(xt)
    wrapper = AutoregressiveWrapper(xt)
    return wrapper, wrapper  # forward((b, n + 1)) returns the loss


def worker(args: argparse.Namespace) -> dict[str, float]:
    """Measure one model in this (fresh) process."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tokens = torch.randint(0, args.num_tokens, (args.batch, args.seq + 1))
    xt_reference()  # every import done before the baseline, so no model pays for them
    rss_before = current_rss()
    model, step_loss = build(args.worker, args)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        step_loss(tokens).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    start, own_start, all_start = time.perf_counter(), time.process_time(), busy_cpu_s()
    for _ in range(args.steps):
        step()
    elapsed = time.perf_counter() - start
    others_s = busy_cpu_s() - all_start - (time.process_time() - own_start)
    return dict(tokens_per_s=args.batch * args.seq * args.steps / elapsed, step_s=elapsed / args.steps,
                peak_mib=(peak_rss() - rss_before) / 2**20, params=sum(p.numel() for p in model.parameters()),
                # cores busy with other processes while timing: OpenMP threads stall when they share cores
                other_load=max(others_s / elapsed, 0.0))


def run_worker(name: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--threads", str(args.threads),
           "--seed", str(args.seed), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--document-len", str(args.document_len)]
    for key in CONFIG_KEYS:
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {name} failed (exit {proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    names = [*MODELS, *(["gpt4_compiled"] if args.compile else []),
             *(["gpt4_document_mask"] if args.document_mask else [])]
    config = {k: getattr(args, k) for k in (*CONFIG_KEYS, "rounds", "steps", "warmup", "threads", "seed")}
    print(f"config: {config}", flush=True)
    rounds: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        order = order[::-1] if r % 2 else order
        results = {name: run_worker(name, args) for name in order}
        rounds.append({"order": order, "results": results})
        line = ", ".join(f"{n} {results[n]['tokens_per_s']:.0f} tok/s" for n in order)
        print(f"round {r}: {line}", flush=True)
        busy = {n: round(res["other_load"], 2) for n, res in results.items()
                if res["other_load"] > 0.2 and res["step_s"] * args.steps > 0.5}  # /proc/stat ticks: 10 ms
        if busy:  # another process shared the cores while these were timed
            print(f"  warning: other processes busy during {busy} (cores); those timings are unreliable")

    summary: dict[str, dict[str, float]] = {}
    for name in names:
        tps = [rd["results"][name]["tokens_per_s"] for rd in rounds]
        summary[name] = dict(tokens_per_s_median=statistics.median(tps), tokens_per_s_min=min(tps),
                             tokens_per_s_max=max(tps),
                             peak_mib=statistics.median(rd["results"][name]["peak_mib"] for rd in rounds),
                             params=rounds[0]["results"][name]["params"])
    ratios: dict[str, float] = {}
    for name in names:
        for ref in ("xt_model", "xt_arwrapper"):
            if name != ref:
                ratios[f"{name}_vs_{ref}_tokens_per_s"] = ratio(summary[name]["tokens_per_s_median"],
                                                                summary[ref]["tokens_per_s_median"])
        if name != "xt_model":
            ratios[f"{name}_vs_xt_model_peak_mem"] = ratio(summary[name]["peak_mib"],
                                                           summary["xt_model"]["peak_mib"])

    if "gpt4_document_mask" in summary:  # what masking costs against the same model unmasked
        ratios["gpt4_document_mask_vs_gpt4_tokens_per_s"] = ratio(summary["gpt4_document_mask"]["tokens_per_s_median"],
                                                                  summary["gpt4"]["tokens_per_s_median"])
    header = (f"{'model':<15}{'tokens/s':>11}{'min':>10}{'max':>10}{'peak MiB':>10}"
              f"{'vs xt_model':>13}{'vs xt_arwrapper':>17}{'mem vs xt_model':>17}")
    print(header)
    print("-" * len(header))
    for name, s in summary.items():
        tps = s["tokens_per_s_median"]
        print(f"{name:<15}{tps:>11.0f}{s['tokens_per_s_min']:>10.0f}{s['tokens_per_s_max']:>10.0f}"
              f"{s['peak_mib']:>10.1f}{ratio(tps, summary['xt_model']['tokens_per_s_median']):>13.3f}"
              f"{ratio(tps, summary['xt_arwrapper']['tokens_per_s_median']):>17.3f}"
              f"{ratio(s['peak_mib'], summary['xt_model']['peak_mib']):>17.3f}")
    if "gpt4_document_mask_vs_gpt4_tokens_per_s" in ratios:
        print(f"document masking: {ratios['gpt4_document_mask_vs_gpt4_tokens_per_s']:.3f}x the unmasked tokens/s")
    wall = time.perf_counter() - t0
    print(f"wall time: {wall:.1f}s")

    report = dict(config=config, machine=machine_info(),
                  rounds=rounds, medians=summary, ratios=ratios, wall_s=wall)
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
