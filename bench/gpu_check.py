"""The GPU check: one command that measures what the CPU cannot, step by step, each guarded and timed.

    python bench/gpu_check.py                 # on a CUDA machine (~8 min on one H100/H200)
    python bench/gpu_check.py --quick         # ~1 min: one attention shape, 5-step runs
    python bench/gpu_check.py --quick --cpu   # CI: the same steps on tiny shapes, on the CPU (so it cannot rot)

Steps, in order (a failing step records its error and the next one runs; the JSON is rewritten after each):
1. attention   `bench/attention_kernels.py` at the seed's shapes (h 24, d 128, one kv head, bf16), n 2 048 and 8 192:
               FlexAttention causal + ALiBi vs SDPA without bias (FlashAttention, the upper bound) vs a dense bias.
2. model       GPT4 on the device: `attn_backend=flex` vs `sdpa` logits and gradients, fp32 (atol 1e-4) and bf16
               autocast (atol 0.05 on logits); bf16-true forward; `generate` with the KV cache (tokens/s).
3. train_*     `python -m gpt4_lightning.train` for a few steps (gpt4_2b FSDP2 bf16, seq 8 192, AC; then with
               compile; gpt4_125m and gpt4_350m for comparison): tokens/s, TFLOP/s, MFU and peak memory from the
               run's metrics, beside the planner's prediction for the same shape.
Output: a table on stdout and `bench/results/gpu_check.json` (BENCHMARKS.md quotes both with the command).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from machine_info import machine_info  # noqa: E402

TINY = ["model.num_tokens=512", "model.dim=64", "model.depth=2", "model.heads=4", "model.dim_head=16",
        "model.alibi_num_heads=2", "model.max_seq_len=128"]
# (name, model overrides, seq_len, extra overrides) of the training runs on a GPU
GPU_RUNS = [
    ("train_gpt4_2b_fsdp_ac", ["model=gpt4_2b"], 8192, ["parallel.activation_checkpointing=true"]),
    ("train_gpt4_2b_fsdp_ac_compile", ["model=gpt4_2b"], 8192,
     ["parallel.activation_checkpointing=true", "parallel.compile=true"]),
    ("train_gpt4_125m_fsdp", ["model=gpt4_125m"], 2048, []),
    ("train_gpt4_350m_fsdp", ["model=gpt4_350m"], 2048, []),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one attention shape, 5 training steps per run")
    p.add_argument("--cpu", action="store_true", help="run every step on the CPU at tiny shapes (CI)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default 30; --quick 5)")
    p.add_argument("--only", nargs="+", default=None, help="run only these steps (attention, model, train)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_check.json")
    return p.parse_args(argv)


# --- 1. attention ----------------------------------------------------------------------------------------


def attention(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    seqs = [128] if args.cpu else [2048] if args.quick else [2048, 8192]
    out: dict[str, Any] = {}
    for n in seqs:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, str(REPO / "bench" / "attention_kernels.py"), "--out", f"{tmp}/a.json"]
            cmd += ["--quick"] if args.cpu else ["--seq", str(n), "--iters", "5" if args.quick else "10"]
            subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True)
            report = json.loads(Path(f"{tmp}/a.json").read_text())
        out[str(n)] = {k: report[k] for k in ("results", "ratios") if k in report}
    return out


# --- 2. model --------------------------------------------------------------------------------------------


def model_checks(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from gpt4_lightning import GPT4

    small = dict(num_tokens=512, max_seq_len=256, dim=128, depth=2, heads=8, dim_head=16, alibi_num_heads=4)
    cfg = small if args.cpu else dict(num_tokens=8192, max_seq_len=2048, dim=1024, depth=4, heads=8, dim_head=128,
                                      alibi_num_heads=4)
    n = 96 if args.cpu else 1024
    torch.manual_seed(0)
    models = {b: GPT4(**cfg, attn_backend=b).to(device) for b in ("sdpa", "flex")}
    models["flex"].load_state_dict(models["sdpa"].state_dict())
    tokens = torch.randint(0, cfg["num_tokens"], (2, n + 1), device=device)
    flex_backward = device.type == "cuda"  # FlexAttention has no CPU backward
    result: dict[str, Any] = {}
    for precision in ("fp32", "bf16_autocast"):
        logits, grads = {}, {}
        for name, model in models.items():
            model.zero_grad(set_to_none=True)
            with torch.set_grad_enabled(name == "sdpa" or flex_backward), torch.autocast(
                    device.type, dtype=torch.bfloat16, enabled=precision != "fp32"):
                out = model(tokens[:, :-1])
            logits[name] = out.detach().float()
            if out.requires_grad:
                torch.nn.functional.cross_entropy(out.float().flatten(0, 1), tokens[:, 1:].flatten()).backward()
                grads[name] = torch.cat([p.grad.float().flatten() for p in model.parameters()])
        diff = float((logits["flex"] - logits["sdpa"]).abs().max())
        entry = {"logits_max_abs_diff": diff, "tolerance": 1e-4 if precision == "fp32" else 0.05}
        if len(grads) == 2:
            entry["grad_max_abs_diff"] = float((grads["flex"] - grads["sdpa"]).abs().max())
        entry["ok"] = diff <= entry["tolerance"]
        result[precision] = entry
    bf16 = models["sdpa"].to(torch.bfloat16)
    with torch.no_grad():
        result["bf16_true_forward_finite"] = bool(torch.isfinite(bf16(tokens[:, :-1]).float()).all())
        prompt, new = tokens[:, :16], 16 if args.cpu else 256
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        generated = bf16.generate(prompt, new)
        if device.type == "cuda":
            torch.cuda.synchronize()
        result["generate_tokens_per_s"] = generated.numel() / (time.perf_counter() - start)
    return result


# --- 3. training -----------------------------------------------------------------------------------------


def train_run(args: argparse.Namespace, device: torch.device, model: list[str], seq: int, extra: list[str],
              steps: int) -> dict[str, Any]:
    """A short `train` run (random-free: the stdlib corpus, FSDP2 on every local device), its metrics and the
    planner's peak for the same shape."""
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [*model, "trainer=fsdp", f"data.seq_len={seq}", "data.batch_size=1", f"trainer.max_steps={steps}",
                     "trainer.log_every_n_steps=1", "trainer.limit_val_batches=0", "checkpoint.every_n_steps=100000",
                     "report.sample_tokens=0", "scheduler.warmup_steps=1", f"model.max_seq_len={seq}",
                     f"hydra.run.dir={tmp}/run", *extra]
        if args.cpu:  # a small local corpus: this repository's docs as text
            corpus = Path(tmp) / "corpus.txt"
            corpus.write_text("\n\n".join(p.read_text() for p in sorted(REPO.glob("*.md"))))
            overrides += [*TINY, "trainer.accelerator=cpu", "trainer.devices=1", "tokenizer.vocab_size=512",
                          "data=files", f"data.path={corpus}", "data.val_fraction=0"]
        else:
            overrides += ["precision=bf16_mixed", "trainer.devices=1"]  # one GPU: the MFU of one device
        env = {**os.environ, "GPT4_LIGHTNING_CACHE": os.environ.get("GPT4_LIGHTNING_CACHE", f"{tmp}/cache")}
        proc = subprocess.run([sys.executable, "-m", "gpt4_lightning.train", *overrides], cwd=tmp, env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "train failed")
        with open(Path(tmp) / "run" / "logs" / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
    def last(key: str) -> float | None:
        return next((float(r[key]) for r in reversed(rows) if r.get(key)), None)

    later = [float(r["perf/tokens_per_s"]) for r in rows[len(rows) // 2:] if r.get("perf/tokens_per_s")]
    return {"overrides": overrides, "tokens_per_s": sorted(later)[len(later) // 2] if later else None,
            "tflops": last("perf/tflops"), "mfu": last("perf/mfu"), "peak_gib": last("mem/peak_gib"),
            "peak_above_baseline_gib": last("mem/peak_above_baseline_gib"), "final_train_loss": last("train/loss"),
            "planned_peak_gib": planned_peak(overrides, device)}


def planned_peak(overrides: list[str], device: torch.device) -> float | None:
    """The preflight planner's peak per rank for the run's config (`run.preflight`), in GiB."""
    from gpt4_lightning.config import compose_config, to_typed
    from gpt4_lightning.run.preflight import run_shape

    cfg = compose_config("train", [o for o in overrides if not o.startswith("hydra.")])
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    return run_shape(to_typed(cfg), cfg.trainer, gpus).plan().peak / 2**30


# --- the driver ------------------------------------------------------------------------------------------


def table(results: dict[str, Any]) -> str:
    lines = [f"{'step':<34}{'status':<8}{'s':>7}  figures"]
    for name, r in results["steps"].items():
        figures = r.get("figures", {})
        if name.startswith("train"):
            text = ", ".join(f"{k} {v:.3g}" for k, v in figures.items()
                             if isinstance(v, float) and k != "final_train_loss")
        elif name == "attention":
            ratio = "flex_alibi_ms_vs_sdpa_causal"
            text = "; ".join(f"n {n}: flex/sdpa_causal {v.get('ratios', {}).get(ratio, 0):.2f}x"
                             for n, v in figures.items())
        else:
            text = ", ".join(f"{k} {v['logits_max_abs_diff']:.2g}" if isinstance(v, dict) else f"{k} {v:.4g}"
                             for k, v in figures.items())
        lines.append(f"{name:<34}{r['status']:<8}{r['seconds']:>7.1f}  {text or r.get('error', '')}"[:200])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and not args.cpu
    if not cuda and not args.cpu:
        print("error: no CUDA GPU here; run with --cpu (tiny shapes) or on a GPU machine", file=sys.stderr)
        return 1
    device = torch.device("cuda" if cuda else "cpu")
    steps = args.steps or (3 if args.cpu else 5 if args.quick else 30)
    runs = ([("train_tiny_fsdp", [], 64, [])] if args.cpu else GPU_RUNS[:1] + GPU_RUNS[2:3] if args.quick
            else GPU_RUNS)
    plan: list[tuple[str, Any]] = [("attention", lambda: attention(args, device)),
                                   ("model", lambda: model_checks(args, device))]
    plan += [(name, lambda m=m, s=s, e=e: train_run(args, device, m, s, e, steps)) for name, m, s, e in runs]
    if args.only:
        plan = [(n, f) for n, f in plan if any(n.startswith(o) for o in args.only)]
    results: dict[str, Any] = {"command": " ".join(["python bench/gpu_check.py", *(argv or sys.argv[1:])]),
                               "machine": machine_info(device), "steps": {}}
    if cuda:
        results["machine"]["driver"] = torch.version.cuda
    for name, step in plan:
        start = time.perf_counter()
        try:
            results["steps"][name] = {"status": "ok", "figures": step()}
        except Exception as e:  # one step's failure must not lose the others' figures
            results["steps"][name] = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:500],
                                      "traceback": traceback.format_exc()[-2000:]}
        results["steps"][name]["seconds"] = time.perf_counter() - start
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"{name}: {results['steps'][name]['status']} ({results['steps'][name]['seconds']:.1f} s)", flush=True)
    print(table(results))
    print(f"wrote {args.out}")
    return 0 if all(r["status"] == "ok" for r in results["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
