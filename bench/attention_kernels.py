"""Attention kernels on the GPT4's shapes: FlexAttention with ALiBi vs SDPA without a bias, side by side.

The question it answers: what does ALiBi cost? `flex_alibi` is the model's CUDA path (causal block
mask + ALiBi `score_mod` inside the kernel, multi-query K/V shared through `enable_gqa`);
`sdpa_causal` is the fastest thing PyTorch has for the same shapes without a positional bias
(`is_causal`, FlashAttention-2 on H100); `sdpa_alibi_dense` is the model's CPU path (SDPA with a
materialised `(1, h, n, n)` bias, chunked queries), skipped when that bias would not fit
`--max-bias-gib`. Each is timed forward + backward (forward only where the kernel has no backward:
FlexAttention on CPU), after warm-up (which includes compilation), median of `--iters`.
Reported: ms, attention TFLOP/s (causal: 2·b·h·n²·d forward, 2.5× that backward), peak memory
(CUDA), and each path's max |Δ| from `sdpa_alibi_dense` or the reference on the same inputs.

    python bench/attention_kernels.py                  # CUDA: the seed's shapes (h 24, d 128, n 8192), bf16
    python bench/attention_kernels.py --quick          # CPU-sized, for tests
    python bench/attention_kernels.py --seq 4096 --batch 2 --out /tmp/attn.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from machine_info import machine_info

from gpt4_lightning.model import GPT4Config
from gpt4_lightning.model.kernels import AttentionBias, flex_attention_causal, reference_attention, sdpa_attention
from gpt4_lightning.model.positional import Alibi

REPO = Path(__file__).resolve().parent.parent
Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    seed = GPT4Config()
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=seed.heads)
    p.add_argument("--alibi-heads", type=int, default=seed.alibi_num_heads)
    p.add_argument("--dim-head", type=int, default=seed.dim_head)
    p.add_argument("--seq", type=int, default=seed.max_seq_len if cuda else 1024)
    p.add_argument("--kv-heads", type=int, default=1, help="1: multi-query (the seed); = heads: MHA")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16" if cuda else "fp32")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--max-bias-gib", type=float, default=8.0, help="skip sdpa_alibi_dense above this bias size")
    p.add_argument("--quick", action="store_true", help="tiny shapes, 2 iterations (for tests)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "attention_kernels.json")
    args = p.parse_args(argv)
    if args.quick:
        args.heads, args.alibi_heads, args.dim_head, args.seq, args.iters, args.warmup = 4, 2, 16, 384, 2, 1
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_kernel(kernel: Kernel, inputs: list[torch.Tensor], backward: bool, warmup: int,
                iters: int, device: torch.device) -> tuple[list[float], torch.Tensor]:
    out = None
    times = []
    for i in range(warmup + iters):
        for t in inputs:
            t.grad = None
        sync(device)
        start = time.perf_counter()
        out = kernel(*inputs)
        if backward:
            out.backward(torch.ones_like(out))
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times, out.detach()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    b, h, n, d = args.batch, args.heads, args.seq, args.dim_head
    gen = torch.Generator(device="cpu").manual_seed(0)
    q = (torch.randn(b, h, n, d, generator=gen) * d**-0.5).to(device, dtype).requires_grad_()
    k = torch.randn(b, args.kv_heads, n, d, generator=gen).to(device, dtype).requires_grad_()
    v = torch.randn(b, args.kv_heads, n, d, generator=gen).to(device, dtype).requires_grad_()
    alibi = Alibi(args.alibi_heads, h).to(device)
    alibi.reset_parameters()
    slopes = alibi.slopes.to(device)
    bias_gib = h * n * n * torch.finfo(dtype).bits / 8 / 2**30

    cases: dict[str, tuple[Kernel, bool]] = {
        "flex_alibi": (lambda q, k, v: flex_attention_causal(q, k, v, AttentionBias(None, slopes)),
                       device.type == "cuda"),
        "sdpa_causal": (lambda q, k, v: sdpa_attention(q, k, v, AttentionBias(None, None)), True),
    }
    if bias_gib <= args.max_bias_gib:
        dense = alibi.dense_bias(n, n, dtype)
        cases["sdpa_alibi_dense"] = (lambda q, k, v: sdpa_attention(q, k, v, AttentionBias(dense, slopes)), True)

    fwd_flops = 2 * b * h * n * n * d  # causal: half of q·kᵀ and p·v (2 · 2·b·h·n²·d / 2)
    results: dict[str, Any] = {}
    outputs: dict[str, torch.Tensor] = {}
    for name, (kernel, backward) in cases.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        qkv = [q, k, v] if backward else [t.detach() for t in (q, k, v)]
        times, outputs[name] = time_kernel(kernel, qkv, backward, args.warmup, args.iters, device)
        ms = statistics.median(times) * 1e3
        flops = fwd_flops * (3.5 if backward else 1.0)
        results[name] = {"ms": ms, "pass": "fwd+bwd" if backward else "fwd", "tflops": flops / (ms / 1e3) / 1e12,
                         "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}

    with torch.no_grad():  # agreement with the ALiBi ground truth on the same inputs
        truth = outputs.get("sdpa_alibi_dense")
        if truth is None and n <= 4096:
            truth = reference_attention(q, k, v, AttentionBias(alibi.dense_bias(n, n, torch.float32), slopes))
        for name in ("flex_alibi", "sdpa_alibi_dense"):
            if truth is not None and name in outputs:
                results[name]["max_abs_diff_vs_alibi"] = float((outputs[name].float() - truth.float()).abs().max())

    ratios = {"flex_alibi_ms_vs_sdpa_causal": results["flex_alibi"]["ms"] / results["sdpa_causal"]["ms"]}
    if "sdpa_alibi_dense" in results:
        ratios["flex_alibi_ms_vs_sdpa_alibi_dense"] = results["flex_alibi"]["ms"] / results["sdpa_alibi_dense"]["ms"]
    report = {
        "config": {"batch": b, "heads": h, "alibi_heads": args.alibi_heads, "kv_heads": args.kv_heads, "seq": n,
                   "dim_head": d, "dtype": args.dtype, "iters": args.iters, "dense_bias_gib": bias_gib},
        "machine": machine_info(device),
        "results": results, "ratios": ratios,
    }
    print(f"attention b={b} h={h} (alibi {args.alibi_heads}) kv_heads={args.kv_heads} n={n} d={d} {args.dtype} "
          f"on {report['machine']['device']}")
    print(f"{'kernel':<18}{'pass':>9}{'ms':>11}{'TFLOP/s':>10}{'peak GiB':>10}{'max|Δ| vs ALiBi':>17}")
    for name, r in results.items():
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        diff = f"{r['max_abs_diff_vs_alibi']:.1e}" if "max_abs_diff_vs_alibi" in r else "-"
        print(f"{name:<18}{r['pass']:>9}{r['ms']:>11.2f}{r['tflops']:>10.3g}{peak:>10}{diff:>17}")
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
