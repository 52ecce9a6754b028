"""Memory per rank of a training step: the plan (`gpt4_lightning.memory.plan_memory`), and plan vs measured.

Plan only (nothing is allocated: the model runs on fake tensors), GiB per rank, without and with
activation checkpointing:

    python bench/memory_plan.py --model gpt4_2b --strategy fsdp --world-size 8 --precision bf16_mixed \\
        --micro-batch 1 --seq-len 8192 --device cuda
    python bench/memory_plan.py --model gpt4_125m -o num_tokens=8192 --micro-batch 8 --seq-len 256 --ac --ac-every 2

Plan vs measured (`--measure`): small CPU configs run through the real CLI
(`python -m gpt4_lightning.train ... trainer.max_steps=3`) in subprocesses, 1 process and 2 ranks
(DDP, FSDP2), fp32, without and with activation checkpointing; the measured value is the `PeakMemory`
callback's `mem/peak_above_baseline_gib` (peak RSS of the training steps minus the RSS before the model
was built, max over ranks), compared with the plan's peak:

    python bench/memory_plan.py --measure                 # both allocator settings (see --malloc)
    python bench/memory_plan.py --measure --quick --malloc fixed --train-arg data=files ...   # 1 config (tests)

glibc's malloc raises its mmap threshold as large blocks are freed (up to 32 MiB), after which freed
activations stay in the heap and count in RSS. `--malloc fixed` runs the training processes with
`MALLOC_MMAP_THRESHOLD_=131072` so that RSS follows the live tensors (what `plan_memory` models, and what
`torch.cuda.max_memory_allocated` reports on GPUs); `--malloc default` leaves glibc alone.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine_info import machine_info
from omegaconf import OmegaConf

from gpt4_lightning import GPT4Config
from gpt4_lightning.memory import GIB, MemoryPlan, param_groups, plan_memory

REPO = Path(__file__).resolve().parent.parent
ROWS = [("params", "params"), ("grads", "grads (alive at the peak)"), ("optimizer", "optimizer state (AdamW)"),
        ("comm_buffers", "comm buffers (DDP buckets / FSDP)"), ("activations", "activations (alive at the peak)"),
        ("transient", "transient"), ("peak", "total (peak)")]
INFO = [("activations_saved", "activations at end of forward"), ("activations_per_block", "  per decoder block"),
        ("activations_outside_blocks", "  outside blocks (emb, logits, loss)")]

# --measure: the model (gpt4_125m's shape, narrower and shallower so a step takes seconds on 2 cores) and configs
MEASURE_MODEL = ["num_tokens=16384", "dim=512", "depth=8", "heads=8", "dim_head=64", "alibi_num_heads=4",
                 "max_seq_len=512"]
MEASURE_CONFIGS = [  # name, strategy, devices, micro-batch per rank, activation checkpointing
    ("1 process", "single", 1, 4, False), ("1 process, AC", "single", 1, 4, True),
    ("DDP 2 ranks", "ddp", 2, 4, False), ("DDP 2 ranks, AC", "ddp", 2, 4, True),
    ("FSDP 2 ranks", "fsdp", 2, 4, False), ("FSDP 2 ranks, AC", "fsdp", 2, 4, True),
]
MEASURE_SEQ = 512  # > kernels.CAUSAL_CHUNK: the chunked SDPA path
MALLOC_FIXED = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def model_config(name: str, overrides: list[str]) -> GPT4Config:
    """A `conf/model/<name>.yaml` preset with `key=value` overrides, composed as `train` composes it."""
    from gpt4_lightning.config import compose_config, config_dir

    presets = sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))
    if name not in presets:
        raise SystemExit(f"error: no model preset {name!r}; choose from {presets}")
    cfg = compose_config("train", [f"model={name}", *(f"model.{o}" for o in overrides)])
    return GPT4Config.from_kwargs(**OmegaConf.to_container(cfg.model, resolve=True))


def gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.2f}"


def plan_table(plans: dict[str, MemoryPlan]) -> str:
    names = list(plans)
    width = max(len(label) for _, label in ROWS + INFO) + 2
    lines = [f"{'GiB per rank':<{width}}" + "".join(f"{n:>16}" for n in names), "-" * (width + 16 * len(names))]
    for key, label in ROWS:
        lines.append(f"{label:<{width}}" + "".join(f"{gib(getattr(plans[n], key)):>16}" for n in names))
    lines.append(f"{'peak during':<{width}}" + "".join(f"{plans[n].peak_phase:>16}" for n in names))
    for key, label in INFO:
        lines.append(f"{label:<{width}}" + "".join(f"{gib(getattr(plans[n], key)):>16}" for n in names))
    return "\n".join(lines)


def plan_main(args: argparse.Namespace) -> dict[str, Any]:
    cfg = model_config(args.model, args.override)
    common = dict(strategy=args.strategy, world_size=args.world_size, precision=args.precision,
                  micro_batch=args.micro_batch, seq_len=args.seq_len, param_dtype=args.param_dtype,
                  reduce_dtype=args.reduce_dtype, device=args.device)
    plans, seconds = {}, {}
    variants = ([("no AC", {})] if not args.ac else []) + [
        (f"AC every {args.ac_every}", dict(activation_checkpointing=True, ac_every=args.ac_every))]
    for name, extra in variants:
        start = time.perf_counter()
        plans[name] = plan_memory(cfg, **common, **extra)  # depth-extrapolated (the default)
        seconds[name] = {"extrapolated": time.perf_counter() - start}
        if args.compare_exact:  # the baseline: every block simulated; the plans must be equal
            start = time.perf_counter()
            exact = plan_memory(cfg, exact=True, **common, **extra)
            seconds[name].update(exact=time.perf_counter() - start, equal=exact == plans[name])
    n = next(iter(plans.values())).n_params
    print(f"{args.model} ({n:,} parameters), {args.strategy} x {args.world_size}, {args.precision}, "
          f"micro-batch {args.micro_batch} x seq {args.seq_len}, {args.device}"
          + (f", FSDP param_dtype {args.param_dtype}" if args.param_dtype else ""))
    print(plan_table(plans))
    for name, t in seconds.items():
        line = f"planning ({name}): {t['extrapolated']:.2f} s"
        if "exact" in t:
            line += (f"; every block simulated: {t['exact']:.2f} s (x{t['exact'] / t['extrapolated']:.1f}), "
                     f"plans equal: {t['equal']}")
        print(line)
    return dict(model=args.model, overrides=args.override, plans={k: p.to_dict() for k, p in plans.items()},
                seconds=seconds)


def read_peak(run_dir: Path) -> dict[str, float]:
    with open(run_dir / "logs" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("mem/peak_above_baseline_gib")]
    if not rows:
        raise RuntimeError(f"{run_dir}: no mem/* metrics logged (is PeakMemory in the callbacks?)")
    peaks = {key: max(float(r[key]) for r in rows)
             for key in ("mem/peak_above_baseline_gib", "mem/peak_gib", "mem/baseline_gib")}
    tps = [float(r["perf/device_tokens_per_s"]) for r in rows[1:] if r.get("perf/device_tokens_per_s")]
    peaks["tokens_per_s"] = statistics.median(tps) if tps else float("nan")  # after the first step
    return peaks


def measure_one(name: str, strategy: str, devices: int, batch: int, ac: bool, args: argparse.Namespace,
                workdir: Path, malloc: str) -> dict[str, Any]:
    model_overrides, seq = MEASURE_MODEL, MEASURE_SEQ
    run_name = f"{strategy}{devices}{'_ac' if ac else ''}_{malloc}"
    cli = ["model=gpt4_125m", *(f"model.{o}" for o in model_overrides), f"data.seq_len={seq}",
           f"data.batch_size={batch}", "trainer.accelerator=cpu", f"trainer.devices={devices}",
           f"trainer.max_steps={args.steps}", "trainer.limit_val_batches=0", "trainer.log_every_n_steps=1",
           "trainer.enable_progress_bar=false", "checkpoint.every_n_steps=100000", "logger=csv",
           f"parallel.activation_checkpointing={str(ac).lower()}", f"hydra.run.dir={workdir / run_name}",
           *args.train_arg]
    if strategy != "single":
        cli.append(f"trainer={strategy}")
    env = {**os.environ, **(MALLOC_FIXED if malloc == "fixed" else {})}
    if malloc != "fixed":
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "gpt4_lightning.train", *cli], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    measured = read_peak(workdir / run_name)
    cfg = model_config("gpt4_125m", model_overrides)
    plan = plan_memory(cfg, strategy=strategy, world_size=devices, precision="fp32", micro_batch=batch,
                       seq_len=seq, activation_checkpointing=ac)
    return dict(name=name, strategy=strategy, devices=devices, micro_batch=batch, seq_len=seq,
                activation_checkpointing=ac, malloc=malloc, wall_s=wall, plan=plan.to_dict(),
                plan_gib=plan.peak / GIB, measured_gib=measured["mem/peak_above_baseline_gib"],
                measured_peak_rss_gib=measured["mem/peak_gib"], baseline_gib=measured["mem/baseline_gib"],
                ratio=plan.peak / GIB / measured["mem/peak_above_baseline_gib"],
                device_tokens_per_s=measured["tokens_per_s"], command=" ".join(cli))


def measure_main(args: argparse.Namespace) -> dict[str, Any]:
    mallocs = ["fixed", "default"] if args.malloc == "both" else [args.malloc]
    configs = MEASURE_CONFIGS[:1] if args.quick else MEASURE_CONFIGS
    model_overrides = MEASURE_MODEL
    n = param_groups(model_config("gpt4_125m", model_overrides)).numel()
    print(f"model: gpt4_125m with {' '.join(model_overrides)} ({n:,} parameters), fp32, seq {MEASURE_SEQ}, "
          f"{args.steps} steps; malloc: {', '.join(mallocs)}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="memory_plan_") as tmp:
        for malloc in mallocs:
            for name, strategy, devices, batch, ac in configs:
                r = measure_one(name, strategy, devices, batch, ac, args, Path(tmp), malloc)
                results.append(r)
                print(f"  {name} [{malloc}]: plan {r['plan_gib']:.3f} GiB, measured {r['measured_gib']:.3f} GiB "
                      f"(ratio {r['ratio']:.3f}), {r['wall_s']:.0f} s", flush=True)
    header = (f"{'config':<18}{'batch':>6}{'plan GiB':>10}" + "".join(
        f"{'measured ' + m:>18}{'plan/meas.':>12}" for m in mallocs) + f"{'baseline GiB':>14}{'peak in':>10}")
    print(header)
    print("-" * len(header))
    for name, _strategy, _devices, batch, _ac in configs:
        rows = {r["malloc"]: r for r in results if r["name"] == name}
        first = rows[mallocs[0]]
        line = f"{name:<18}{batch:>6}{first['plan_gib']:>10.3f}"
        for m in mallocs:
            line += f"{rows[m]['measured_gib']:>18.3f}{rows[m]['ratio']:>12.3f}"
        print(line + f"{first['baseline_gib']:>14.3f}{first['plan']['peak_phase']:>10}")
    worst = max(abs(r["ratio"] - 1) for r in results if r["malloc"] == mallocs[0])
    print(f"largest |plan/measured - 1| ({mallocs[0]} malloc): {worst:.3f}")
    return dict(model_overrides=model_overrides, results=results)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt4_2b", help="conf/model preset (default gpt4_2b)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="model field override, e.g. -o num_tokens=8192 (repeatable)")
    p.add_argument("--strategy", choices=("single", "ddp", "fsdp"), default="fsdp")
    p.add_argument("--world-size", type=int, default=8)
    p.add_argument("--precision", default="bf16_mixed", help="fp32 | bf16_mixed | bf16_true")
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--ac", action="store_true", help="only the plan with activation checkpointing")
    p.add_argument("--compare-exact", action="store_true",
                   help="also plan with every block simulated (the baseline): time and equality")
    p.add_argument("--ac-every", type=int, default=1, help="checkpoint every k-th block (parallel.ac_every)")
    p.add_argument("--param-dtype", choices=("bf16", "fp32"), help="FSDP2 parallel.param_dtype (default: null)")
    p.add_argument("--reduce-dtype", choices=("bf16", "fp32"), help="FSDP2 parallel.reduce_dtype")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda",
                   help="cuda: FlexAttention and foreach AdamW; cpu: SDPA with a dense ALiBi bias, single-tensor AdamW")
    p.add_argument("--measure", action="store_true", help="run small CPU configs through the CLI: plan vs measured")
    p.add_argument("--quick", action="store_true", help="with --measure: only the first (1-process) config")
    p.add_argument("--malloc", choices=("both", "fixed", "default"), default="both")
    p.add_argument("--steps", type=int, default=3, help="with --measure: training steps per run")
    p.add_argument("--train-arg", action="append", default=[], help="extra CLI override for --measure runs")
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--out", type=Path, default=None, help="JSON report (default bench/results/memory_plan*.json)")
    args = p.parse_args(argv)
    if args.strategy == "single":
        args.world_size = 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    report = measure_main(args) if args.measure else plan_main(args)
    report.update(machine=machine_info(), wall_s=time.perf_counter() - start,
                  argv=sys.argv[1:] if argv is None else argv)
    out = args.out or REPO / "bench" / "results" / ("memory_plan_measured.json" if args.measure else "memory_plan.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
