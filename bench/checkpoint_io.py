"""Checkpoint save and load with and without checksums, side by side in one run (a table + a JSON file).

The state is what a training checkpoint of `--model` holds: the fp32 weights and AdamW's two moments (12 bytes a
parameter), as a Lightning checkpoint dict. Rows, the writers taking turns round by round:

- 1 process, a `.ckpt`, each fsync'd: `torch.save(path)` (the raw baseline), Lightning's `TorchCheckpointIO`
  (serialises into an in-memory buffer, then writes), ours (`VerifiedCheckpointIO`: streamed through xxh3-128,
  the manifest beside it); `checkpoint.async_save`'s stall (staging into host memory, a thread started) and its
  background write; load: `torch.load` against ours (every byte verified, then `torch.load`).
- 2 gloo ranks, a DCP directory (each rank its half of every tensor, as FSDP2 shards them): DCP's
  `FileSystemWriter` against ours (`HashingFileSystemWriter`, the same writer hashing as it writes, then the
  digests gathered and the manifest written), `async_save`'s stall and background write; verification of the
  whole directory split over the ranks.

Then, by formula, the training stall of a synchronous save of gpt4_2b (2.46e9 parameters, 29.5 GB of training
state) at 8 and 512 GPUs, 8 GPUs a node, 1 GB/s of write bandwidth per node.

    python bench/checkpoint_io.py                       # gpt4_350m: 4.2 GB a checkpoint, ~13 GB of disk
    python bench/checkpoint_io.py --quick               # gpt4_tiny, 1 round (the CI smoke)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch
from machine_info import machine_info

from gpt4_lightning.checkpoint.background import BackgroundSave, stage_to_host
from gpt4_lightning.checkpoint.integrity import verify
from gpt4_lightning.checkpoint.io import VerifiedCheckpointIO
from gpt4_lightning.config import compose_config, to_typed
from gpt4_lightning.model import GPT4

REPO = Path(__file__).resolve().parent.parent


def training_state(model: str, world: int = 1, rank: int = 0) -> dict:
    """A Lightning-shaped checkpoint of `model`'s weights and two AdamW moments (rank's 1/world of each tensor's
    first dimension, as FSDP2 shards): random fp32, so nothing compresses or dedups."""
    config = to_typed(compose_config("train", [f"model={model}"])).model
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in GPT4.from_config(config).state_dict().items()}
    generator = torch.Generator().manual_seed(rank)

    def shard(shape: torch.Size) -> torch.Tensor:
        rows = -(-shape[0] // world) if len(shape) else 1
        local = (max(0, min(rows, shape[0] - rank * rows)), *shape[1:]) if len(shape) else ()
        return torch.rand(local, generator=generator)

    state = {f"model.{k}": shard(s) for k, s in shapes.items()}
    moments = {i: {"exp_avg": shard(s), "exp_avg_sq": shard(s), "step": torch.tensor(10.0)}
               for i, s in enumerate(shapes.values())}
    return {"state_dict": state, "optimizer_states": [{"state": moments, "param_groups": [{"lr": 1e-3}]}],
            "global_step": 10, "epoch": 0}


def nbytes(state: dict) -> int:
    tensors = list(state["state_dict"].values())
    tensors += [t for m in state["optimizer_states"][0]["state"].values() for t in m.values()]
    return sum(t.numel() * t.element_size() for t in tensors)


def timed(fn) -> float:
    os.sync()  # what the previous round left dirty is not charged to this one
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def durable(save, state: dict, path: Path) -> None:
    """`save(state, path)`, then fsync: every checkpoint is made durable before it is published (as ours does)."""
    save(state, path)
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def start_async(state: dict, path: Path) -> BackgroundSave:
    """What the training step waits for under `checkpoint.async_save` (1 process): the staging, a thread started."""
    staged = stage_to_host(state)
    return BackgroundSave(lambda: VerifiedCheckpointIO().save_checkpoint(staged, path), name="bench")


background: list[BackgroundSave] = []


def one_process(model: str, root: Path, rounds: int) -> dict[str, list[float]]:
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    state = training_state(model)
    path = {name: root / f"{name}.ckpt" for name in ("torch", "lightning", "verified", "async")}
    savers = {"save_torch": lambda: durable(torch.save, state, path["torch"]),
              "save_lightning": lambda: durable(TorchCheckpointIO().save_checkpoint, state, path["lightning"]),
              "save_verified": lambda: VerifiedCheckpointIO().save_checkpoint(state, path["verified"])}
    times: dict[str, list[float]] = {k: [] for k in [*savers, "stall_async", "async_write", "load_torch",
                                                     "load_verified"]}
    for turn in range(rounds):
        for name in (list(savers) if turn % 2 == 0 else list(reversed(savers))):
            times[name].append(timed(savers[name]))
        times["stall_async"].append(timed(lambda: background.append(start_async(state, path["async"]))))
        times["async_write"].append(background.pop().wait())
        loaders = {"load_torch": lambda: torch.load(path["verified"], weights_only=True),
                   "load_verified": lambda: VerifiedCheckpointIO().load_checkpoint(path["verified"], weights_only=True)}
        for name in (list(loaders) if turn % 2 == 0 else list(reversed(loaders))):
            times[name].append(timed(loaders[name]))
    assert verify(path["verified"]).ok
    times["bytes"] = [nbytes(state)]
    return times


RANK = textwrap.dedent("""
    import json, os, sys, time
    import torch, torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    sys.path.insert(0, os.path.join({repo!r}, "bench"))
    from checkpoint_io import training_state, nbytes
    from pathlib import Path
    from gpt4_lightning.checkpoint.io import HashingFileSystemWriter
    from gpt4_lightning.checkpoint.integrity import verify, write_manifest

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    state = training_state({model!r}, world, rank)
    flat = {{"state_dict": state["state_dict"], "optimizer_0": state["optimizer_states"][0]}}
    root = {root!r}

    def save_plain(path):
        dcp.save(flat, storage_writer=dcp.FileSystemWriter(path))

    def save_verified(path):  # as checkpoint.io.VerifiedModelParallelStrategy: hashed, gathered, the manifest
        writer = HashingFileSystemWriter(path)
        dcp.save(flat, storage_writer=writer)
        every: list = [None] * world
        dist.all_gather_object(every, writer.fs.digests.entries)
        if rank == 0:
            write_manifest(Path(path), {{k: v for e in every for k, v in e.items()}}, 10)

    group = dist.new_group(backend="gloo")
    pending = []

    def start_async(path):  # what the training step waits for under checkpoint.async_save: DCP's staging
        pending.append(dcp.async_save(flat, storage_writer=HashingFileSystemWriter(path), process_group=group))

    writers = {{"dcp_save": save_plain, "dcp_save_verified": save_verified, "dcp_stall_async": start_async}}
    times = {{k: [] for k in [*writers, "dcp_async_write", "dcp_verify"]}}

    def timed(fn):
        dist.barrier(); os.sync(); dist.barrier()
        start = time.perf_counter(); fn(); dist.barrier()
        return time.perf_counter() - start

    for turn in range({rounds}):
        for name in (list(writers) if turn % 2 == 0 else list(reversed(writers))):
            path = os.path.join(root, name)
            times[name].append(timed(lambda: writers[name](path)))
            if pending:
                times["dcp_async_write"].append(timed(lambda: pending.pop().result()))
        verified = os.path.join(root, "dcp_save_verified")
        times["dcp_verify"].append(timed(lambda: verify(verified, rank=rank, world=world)))
    assert verify(verified).ok
    dist.all_reduce(t := torch.tensor([nbytes(state)]))
    if rank == 0:
        times["bytes"] = [int(t)]
        print(json.dumps(times))
    dist.destroy_process_group()
""")


def two_ranks(model: str, root: Path, rounds: int) -> dict[str, list[float]]:
    """DCP save, ours against DCP's own writer, and the split verification: 2 gloo ranks (torchrun)."""
    script = root / "rank.py"
    script.write_text(RANK.format(repo=str(REPO), model=model, root=str(root), rounds=rounds))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script)], capture_output=True, text=True, cwd=REPO, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"error: the 2-rank run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


PEAK = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, os.path.join({repo!r}, "bench"))
    from checkpoint_io import training_state, start_async
    from gpt4_lightning.checkpoint.io import VerifiedCheckpointIO

    def high_water_kib():  # this process's own peak (getrusage's ru_maxrss keeps the forking parent's across exec)
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])

    state = training_state({model!r})
    base = high_water_kib()
    if {background!r}:
        start_async(state, {path!r}).wait()
    else:
        VerifiedCheckpointIO().save_checkpoint(state, {path!r})
    print(base, high_water_kib())
""")


def peak_rss_mib(model: str, root: Path) -> dict[str, float]:
    """Peak RSS of a process holding the state, over that before the save (MiB), sync and async, each in a
    process of its own."""
    rows = {}
    for name, background in (("peak_rss_sync_mib", False), ("peak_rss_async_mib", True)):
        script = PEAK.format(repo=str(REPO), model=model, background=background, path=str(root / f"{name}.ckpt"))
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO)
        base, peak = (int(v) for v in out.stdout.split())
        rows[name] = (peak - base) / 1024
    return rows


def stall_by_formula(params: float = 2.46e9, gpus_per_node: int = 8, node_gb_s: float = 1.0) -> list[dict]:
    """A synchronous save stalls every rank until its node has written its share: state / nodes / bandwidth."""
    state_gb = params * 12 / 1e9
    return [{"gpus": gpus, "nodes": gpus // gpus_per_node, "state_gb": round(state_gb, 1),
             "per_node_gb": round(state_gb / (gpus // gpus_per_node), 2),
             "sync_stall_s": round(state_gb / (gpus // gpus_per_node) / node_gb_s, 2)} for gpus in (8, 512)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt4_350m")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="gpt4_tiny, 1 round")
    parser.add_argument("--root", type=Path, default=None, help="where the checkpoints are written (a temp dir)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "checkpoint_io.json")
    args = parser.parse_args()
    model, rounds = ("gpt4_tiny", 1) if args.quick else (args.model, args.rounds)
    root = Path(tempfile.mkdtemp(prefix="ckpt_io.", dir=args.root))
    try:
        one, two = one_process(model, root, rounds), two_ranks(model, root, rounds)
        rss = peak_rss_mib(model, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    median = {k: statistics.median(v) for k, v in {**one, **two}.items() if k != "bytes"}
    ratios = {"save_verified_vs_torch": median["save_verified"] / median["save_torch"],
              "stall_async_vs_sync": median["stall_async"] / median["save_verified"],
              "dcp_stall_async_vs_sync": median["dcp_stall_async"] / median["dcp_save_verified"],
              "save_verified_vs_lightning": median["save_verified"] / median["save_lightning"],
              "load_verified_vs_torch": median["load_verified"] / median["load_torch"],
              "dcp_save_verified_vs_dcp_save": median["dcp_save_verified"] / median["dcp_save"]}
    gb = one["bytes"][0] / 1e9
    print(f"{model}: {gb:.2f} GB of training state; median of {rounds} round(s), seconds")
    print(f"{'row':24s} {'s':>8s} {'GB/s':>7s}")
    for name, seconds in median.items():
        print(f"{name:24s} {seconds:8.2f} {gb / seconds:7.2f}")
    for name, ratio in ratios.items():
        print(f"{name:32s} {ratio:6.3f}")
    for name, mib in rss.items():
        print(f"{name:32s} {mib:8.0f} (the state: {one['bytes'][0] / 2**20:.0f} MiB)")
    formula = stall_by_formula()
    for row in formula:
        print(f"gpt4_2b at {row['gpus']} GPUs ({row['nodes']} nodes, 1 GB/s each): sync stall {row['sync_stall_s']} s")
    report = {"model": model, "rounds": rounds, "bytes": one["bytes"][0], "times_s": {**one, **two},
              "medians_s": median, "ratios": ratios, "peak_rss_above_state_mib": rss, "formula": formula,
              "machine": machine_info(), "command": " ".join(["python", *sys.argv])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
