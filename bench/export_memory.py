"""Peak memory of `python -m gpt4_lightning.export` on gpt4_2b from a 2-rank FSDP checkpoint, and of the old way.

Builds (once) a sharded checkpoint of gpt4_2b as `trainer=fsdp` writes it, without training: 2 gloo ranks build
the model on the meta device, FSDP2-shard it, allocate and initialise only their shards, and `dcp.save` the
model state (`meta.pt` beside it, as Lightning's ModelParallelStrategy writes). Then, each in a fresh process,
its peak RSS read from `getrusage(RUSAGE_CHILDREN)`:

- `export dtype=bf16 max_shard_mb=1024` and `export dtype=fp32` (default 5 GiB shards): the tensors streamed;
- the baseline, `checkpoint.load.load_model` (what the export did before: the whole model gathered in fp32).

    python bench/export_memory.py                       # ~20 GB of disk under --root, ~12 GB of RAM at most
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from machine_info import machine_info

REPO = Path(__file__).resolve().parent.parent

BUILD = textwrap.dedent("""
    import os, sys
    import torch, torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from gpt4_lightning import GPT4
    from gpt4_lightning.parallel.config import ParallelConfig
    from gpt4_lightning.parallel.parallelize import init_sharded_weights, parallelize

    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (2,))
    with torch.device("meta"):
        model = GPT4()
    parallelize(model, ParallelConfig(), mesh)
    model.to_empty(device="cpu")
    with torch.no_grad():
        init_sharded_weights(model, seed=0)
    out = sys.argv[1]
    dcp.save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()}}, checkpoint_id=out)
    if dist.get_rank() == 0:
        torch.save({"gpt4_config": model.config.to_dict(), "global_step": 0, "epoch": 0}, os.path.join(out, "meta.pt"))
    dist.destroy_process_group()
""")

LOAD = "import sys; from gpt4_lightning.checkpoint.load import load_model; load_model(sys.argv[1])"


def peak_rss_of(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(peak RSS in GiB, seconds) of `cmd`, a fresh child process: getrusage's children maximum is that of the
    largest child waited for so far, so each measurement runs in its own interpreter."""
    probe = [sys.executable, "-c", textwrap.dedent("""
        import resource, subprocess, sys, json, time
        start = time.perf_counter()
        subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
        print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - start]))
    """), *cmd]
    out = subprocess.run(probe, env=env, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    kib, seconds = json.loads(out)
    return kib / 2**20, seconds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path("/tmp/gpt4l-export-memory"))
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "export_memory.json")
    args = p.parse_args(argv)
    ckpt = args.root / "gpt4_2b-fsdp2"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not (ckpt / "meta.pt").is_file():
        args.root.mkdir(parents=True, exist_ok=True)
        (args.root / "build.py").write_text(BUILD)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                        "29531", str(args.root / "build.py"), str(ckpt)], check=True, env=env)
        print(f"built {ckpt} in {time.perf_counter() - start:.0f} s")
    from tokenizers import Tokenizer, models

    tokenizer = args.root / "tokenizer.json"
    Tokenizer(models.WordLevel({"<|endoftext|>": 0, "a": 1}, unk_token="<|endoftext|>")).save(str(tokenizer))
    fp32_gib = 2_460_899_840 * 4 / 2**30
    rows = []
    for label, dtype, shard_mb in (("export bf16, 1 GiB shards", "bf16", 1024), ("export fp32, 5 GiB shards", "fp32",
                                                                                 5120)):
        out = args.root / f"export-{dtype}"
        rss, seconds = peak_rss_of([sys.executable, "-m", "gpt4_lightning.export", f"ckpt_path={ckpt}", f"out={out}",
                                    f"dtype={dtype}", f"max_shard_mb={shard_mb}", f"tokenizer_path={tokenizer}"], env)
        model_gib = fp32_gib / (2 if dtype == "bf16" else 1)
        files = sorted(p.name for p in out.glob("model*.safetensors"))
        rows.append({"what": label, "peak_rss_gib": round(rss, 2), "seconds": round(seconds, 1),
                     "model_in_export_dtype_gib": round(model_gib, 2), "files": len(files)})
        print(json.dumps(rows[-1]), flush=True)
    rss, seconds = peak_rss_of([sys.executable, "-c", LOAD, str(ckpt)], env)
    rows.append({"what": "baseline: load_model (whole model, fp32)", "peak_rss_gib": round(rss, 2),
                 "seconds": round(seconds, 1), "model_in_export_dtype_gib": round(fp32_gib, 2), "files": 0})
    print(json.dumps(rows[-1]))
    base = rows[-1]["peak_rss_gib"]
    print("\n| what | peak RSS GiB | the model in its dtype GiB | × baseline | s | safetensors files |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['peak_rss_gib']:.2f} | {r['model_in_export_dtype_gib']:.2f} | "
              f"{r['peak_rss_gib'] / base:.2f} | {r['seconds']:.0f} | {r['files']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine_info(), "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
