"""Throughput metrics: tokens seen, tokens/s, TFLOP/s from the documented formula, MFU when a peak is given
(the world-size factor: tests/distributed/test_ddp_fsdp.py, 2 DDP/FSDP processes)."""

from types import SimpleNamespace

import lightning as L
import pytest
import torch

from gpt4_lightning import GPT4Config
from gpt4_lightning.training.callbacks import PeakMemory, ThroughputLogger
from gpt4_lightning.training.flops import flops_per_token, matmul_params
from gpt4_lightning.training.module import GPT4LitModule
from tests.helpers.models import TINY


class Recorder(L.Callback):
    def __init__(self, prefix: str = "perf/"):
        self.prefix, self.metrics = prefix, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(self.prefix)})


class FakeClock(L.Callback):
    """A deterministic `time.perf_counter` for the callbacks module: (batch_idx + 1)² seconds from the start
    of batch `batch_idx` on, 0 before the first batch (what ThroughputLogger reads at on_train_start)."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.now = float((batch_idx + 1) ** 2)


def test_throughput_metrics(monkeypatch):
    from gpt4_lightning.training import callbacks

    clock = FakeClock()
    monkeypatch.setattr(callbacks, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    module = GPT4LitModule(GPT4Config(**TINY), optimizer=lambda groups: torch.optim.AdamW(groups, lr=1e-3))
    throughput, recorder = ThroughputLogger(log_every_n_steps=2, peak_tflops=0.5), Recorder()
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[clock, throughput, recorder])
    tokens = torch.randint(0, TINY["num_tokens"], (24, 33))
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(tokens, batch_size=4))
    assert len(recorder.metrics) == 6 and recorder.metrics[0] == {}  # nothing logged before step 2
    per_token = flops_per_token(module.model_config, matmul_params(module.model), 32)
    # logged after batches 1, 3, 5 (steps 2, 4, 6), each window 2 batches of 4 x 32 tokens; the fake clock reads
    # 0 at the start, then 4, 16 and 36 s: windows of 4, 12 and 20 s (a window that never restarted would give
    # 512 / 16 s and 768 / 36 s)
    windows = {1: (256, 4.0), 3: (256, 12.0), 5: (256, 20.0)}
    for i, (window_tokens, seconds) in windows.items():
        m = recorder.metrics[i]
        assert m["perf/tokens_seen"] == (i + 1) * 4 * 32  # one process: all ranks' tokens = this rank's
        tps = window_tokens / seconds
        assert m["perf/device_tokens_per_s"] == pytest.approx(tps, rel=1e-6)
        assert m["perf/tokens_per_s"] == pytest.approx(tps, rel=1e-6)  # world size 1
        assert m["perf/device_tflops"] == pytest.approx(tps * per_token / 1e12, rel=1e-5)
        assert m["perf/tflops"] == pytest.approx(tps * per_token / 1e12, rel=1e-5)
        assert m["perf/mfu"] == pytest.approx(tps * per_token / 0.5e12, rel=1e-5)
    assert throughput.state_dict() == {"tokens_seen": 6 * 4 * 32}
    # the per-token FLOPs by hand for TINY at n = 32 (flops.py: 6 N + 12 L n d): N = the matmul weights
    # (embedding excluded, the head included): per block q 64x64, k and v 64x16 (one kv head), out 64x64,
    # feed-forward 64x256 and 256x64; the head 64x256
    n_matmul = 2 * (64 * 64 + 2 * 64 * 16 + 64 * 64 + 2 * 64 * 256) + 64 * 256
    assert matmul_params(module.model) == n_matmul
    assert per_token == 6 * n_matmul + 12 * 2 * 32 * 64


def test_peak_memory_callback_logs_peak_above_the_pre_model_baseline():
    # logits of 8 x 128 x 32768 fp32 (128 MiB): above glibc's largest mmap threshold (32 MiB), so they are fresh pages
    # even in a pytest process whose heap holds freed memory from earlier tests (16 MiB logits were served from it)
    config = GPT4Config(**{**TINY, "num_tokens": 32768})
    module = GPT4LitModule(config, optimizer=lambda groups: torch.optim.AdamW(groups, lr=1e-3))
    peak, recorder = PeakMemory(), Recorder("mem/")
    trainer = L.Trainer(max_steps=3, accelerator="cpu", log_every_n_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[peak, recorder])
    tokens = torch.randint(0, config.num_tokens, (24, 129))
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(tokens, batch_size=8))
    assert len(recorder.metrics) == 3
    for m in recorder.metrics:
        assert set(m) == {"mem/peak_gib", "mem/baseline_gib", "mem/peak_above_baseline_gib"}
        assert m["mem/baseline_gib"] > 0.05  # a Python process with torch
        assert m["mem/peak_above_baseline_gib"] > 128 / 1024  # at least the logits
        assert abs(m["mem/peak_above_baseline_gib"] - (m["mem/peak_gib"] - m["mem/baseline_gib"])) < 1e-9
    assert recorder.metrics[-1]["mem/peak_gib"] >= recorder.metrics[0]["mem/peak_gib"]
