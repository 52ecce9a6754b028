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
from conftest import train_args
from torch.utils._python_dispatch import TorchDispatchMode

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
    from gpt4_lightning.training.build import build

    monkeypatch.setenv("GPT4_LIGHTNING_CACHE", str(workdir / "cache"))
    every = 4
    overrides = [a for a in train_args(workdir, 12) if not a.startswith("trainer.log_every_n_steps=")]
    cfg = compose_config("train", [*overrides, f"trainer.log_every_n_steps={every}", "trainer.limit_val_batches=0",
                                   "trainer.enable_progress_bar=true", "logger=none", "checkpoint_every_n_steps=1000",
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
