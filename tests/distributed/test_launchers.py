"""Launchers without a cluster: Hydra multirun with DDP ranks, and multi-node DDP through torchrun; real CLI runs in
subprocesses (2 gloo ranks), compared step by step."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import run, step_losses, train_args


def tiny(workdir: Path, *extra: str) -> list[str]:
    base = [a for a in train_args(workdir, 8) if not a.startswith(("run_name=", "data.batch_size=", "optim.lr=",
                                                                   "trainer.log_every_n_steps="))]
    return [*base, "trainer.log_every_n_steps=1", "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false",
            *extra]


@pytest.mark.slow
def test_local_multirun_with_ddp_ranks_runs_each_job_once_in_its_own_dir(workdir, tmp_path):
    sweep = tmp_path / "sweep"
    outputs = workdir / "outputs"
    before = set(outputs.rglob("*")) if outputs.exists() else set()
    proc = run(workdir, "train", "-m", *tiny(workdir, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                                             "data.batch_size=4", "optim.lr=1e-3,3e-3", f"hydra.sweep.dir={sweep}"))
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"], proc.stderr[-2000:]
    lrs = []
    for job in ("0", "1"):
        job_dir = sweep / job
        assert os.path.realpath(job_dir / "checkpoints" / "last.ckpt").endswith("step000008.ckpt")
        assert max(step_losses(job_dir)) == 7
        lrs.append(next(o for o in (job_dir / ".hydra" / "overrides.yaml").read_text().split() if "optim.lr" in o))
    assert lrs == ["optim.lr=0.001", "optim.lr=0.003"]
    # the child ranks neither re-launched the sweep nor made run directories of their own
    assert proc.stdout.count("run directory:") == 2
    after = set(outputs.rglob("*")) if outputs.exists() else set()
    assert after == before, sorted(after - before)[:5]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_torchrun_nodes_match_one_node_with_two_processes(workdir):
    """The README's recipe: two `torchrun --nnodes 2 --nproc-per-node 1` launches (here on one machine), picked
    up by Lightning as 2 nodes; the same global batch and seed as 1 node x 2 processes give the same losses."""
    common = tiny(workdir, "trainer=ddp", "trainer.accelerator=cpu", "data.batch_size=4")
    run(workdir, "train", *common, "trainer.devices=2", "run_name=one_node")

    env = {**os.environ, "GPT4_LIGHTNING_CACHE": str(workdir / "cache")}
    port = free_port()
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", "gpt4-test",
         "-m", "gpt4_lightning.train", *common, "trainer.num_nodes=2", "trainer.devices=1", "run_name=two_nodes"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (_, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, err[-3000:]
    assert any("MEMBER: 2/2" in err for _, err in outputs)  # one world of 2 ranks across the two launches

    one = step_losses(workdir / "outputs" / "one_node")
    two = step_losses(workdir / "outputs" / "two_nodes")
    assert sorted(one) == sorted(two) == list(range(8))
    for step in one:
        assert abs(one[step] - two[step]) < 1e-6, (step, one[step], two[step])
