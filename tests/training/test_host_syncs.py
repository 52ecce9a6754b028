"""No host-device sync on a training step that does not log: every `.item()`/`bool()`/`int()`/`float()` of a tensor
dispatches `aten._local_scalar_dense`, so a dispatch mode counts them per step, on CPU as it would on a GPU.

What used to read back every step: the forward's token-id check (now the DataModule's, on the host copy), the
non-finite guard's `bool(isfinite(norm))` (now fused AdamW's `found_inf`, read every log_every_n_steps), the
progress bar's loss (now refreshed every log_every_n_steps), and non-fused AdamW's step counts.
"""

import collections
import traceback

import lightning as L
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.helpers.cli import train_args

READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default, torch.ops.aten.item.default)


class CountReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.where: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in READS:
            frames = traceback.extract_stack()[-8:-1]
            self.where[" <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in reversed(frames))] += 1
        return func(*args, **(kwargs or {}))


class ReadsPerStep(L.Callback):
    def __init__(self) -> None:
        self.mode: CountReads | None = None
        self.per_step: dict[int, collections.Counter] = {}

    def on_train_batch_start(self, trainer, *args) -> None:
        self.mode = CountReads()
        self.mode.__enter__()

    def on_train_batch_end(self, trainer, *args) -> None:
        self.mode.__exit__(None, None, None)
        self.per_step[trainer.global_step - 1] = self.mode.where


@pytest.mark.slow
def test_a_step_that_does_not_log_reads_nothing_back_from_the_device(workdir, tmp_path, monkeypatch):
    from gpt4_lightning.config import compose_config
    from gpt4_lightning.run.build import build

    monkeypatch.setenv("GPT4_LIGHTNING_CACHE", str(workdir / "cache"))
    every = 4
    overrides = [a for a in train_args(workdir, 12) if not a.startswith("trainer.log_every_n_steps=")]
    cfg = compose_config("train", [*overrides, f"trainer.log_every_n_steps={every}", "trainer.limit_val_batches=0",
                                   "trainer.enable_progress_bar=true", "logger=none", "checkpoint.every_n_steps=1000",
                                   f"hydra.run.dir={tmp_path}"])
    module, datamodule, trainer = build(cfg)
    probe = ReadsPerStep()
    trainer.callbacks.append(probe)
    trainer.fit(module, datamodule=datamodule)
    assert sorted(probe.per_step) == list(range(12))
    quiet = {step: reads for step, reads in probe.per_step.items() if step > 0 and (step + 1) % every}
    assert len(quiet) == 8
    assert all(not reads for reads in quiet.values()), {s: dict(r) for s, r in quiet.items() if r}
    assert any(probe.per_step[step] for step in (3, 7, 11))  # the probe sees the reads of a logging step


def agree_on_two_ranks(rank: int, init_file: str, rank0_sent_step1, results) -> None:
    """One rank of the test below: three steps of `GracefulStop.agree`; rank 1 has a SIGTERM at step 1 and sends
    it only once rank 0's step 1 has returned."""
    import datetime
    import signal

    import torch.distributed as dist

    from gpt4_lightning.training.stop import GracefulStop

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=30))
    stop = GracefulStop()
    stop._group = dist.new_group(backend="gloo")
    agreed, waited = [], True
    for step in range(3):
        if rank == 1 and step == 1:
            waited = rank0_sent_step1.wait(timeout=60)
        agreed.append(stop.agree(int(signal.SIGTERM) if (rank, step) == (1, 1) else 0, 0))
        if rank == 0 and step == 1:
            rank0_sent_step1.set()
    results.put((rank, agreed, waited, stop._pending is None))
    dist.destroy_process_group()


def test_ranks_agree_on_a_stop_without_waiting_for_each_other_at_the_step(tmp_path):
    """GracefulStop's per-step agreement is non-blocking: a rank's step returns before the other rank has sent that
    step's flags (a blocking all-reduce would wait for it: here, forever), and both learn rank 1's signal at the
    next step, the same step on both; after that stop nothing is left in flight."""
    import multiprocessing
    import signal

    context = multiprocessing.get_context("spawn")
    event, results = context.Event(), context.Queue()
    procs = [context.Process(target=agree_on_two_ranks, args=(rank, str(tmp_path / "init"), event, results))
             for rank in (0, 1)]
    for proc in procs:
        proc.start()
    got = dict((rank, rest) for rank, *rest in (results.get(timeout=120) for _ in procs))
    for proc in procs:
        proc.join(timeout=60)
    expected = [(0, 0), (0, 0), (int(signal.SIGTERM), 0)]
    assert got == {0: [expected, True, True], 1: [expected, True, True]}
