"""Throughput metrics: tokens seen, tokens/s, TFLOP/s from the documented formula, MFU when a peak is given."""

import lightning as L
import torch
from conftest import TINY

from gpt4_lightning import GPT4Config
from gpt4_lightning.training.callbacks import PeakMemory, ThroughputLogger
from gpt4_lightning.training.flops import flops_per_token, matmul_params
from gpt4_lightning.training.module import GPT4LitModule


class Recorder(L.Callback):
    def __init__(self, prefix: str = "perf/"):
        self.prefix, self.metrics = prefix, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(self.prefix)})


def test_throughput_metrics():
    module = GPT4LitModule(GPT4Config(**TINY), optimizer=lambda groups: torch.optim.AdamW(groups, lr=1e-3))
    throughput, recorder = ThroughputLogger(log_every_n_steps=2, peak_tflops=0.5), Recorder()
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[throughput, recorder])
    tokens = torch.randint(0, TINY["num_tokens"], (24, 33))
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(tokens, batch_size=4))
    last = recorder.metrics[-1]
    assert last["perf/tokens_seen"] == 6 * 4 * 32  # one process: all ranks' tokens = this rank's
    assert last["perf/tokens_per_s"] == last["perf/device_tokens_per_s"] > 0
    per_token = flops_per_token(module.model_config, matmul_params(module.model), 32)
    assert abs(last["perf/device_tflops"] - last["perf/device_tokens_per_s"] * per_token / 1e12) < 1e-9
    assert abs(last["perf/mfu"] - last["perf/device_tflops"] / 0.5) < 1e-9
    assert throughput.state_dict() == {"tokens_seen": 6 * 4 * 32}


def test_peak_memory_callback_logs_peak_above_the_pre_model_baseline():
    # logits of 8 x 128 x 4096 fp32 (16 MiB) and their gradients: far above what the allocator has spare
    config = GPT4Config(**{**TINY, "num_tokens": 4096})
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
        assert m["mem/peak_above_baseline_gib"] > 32 / 1024  # at least the logits, their softmax and gradient
        assert abs(m["mem/peak_above_baseline_gib"] - (m["mem/peak_gib"] - m["mem/baseline_gib"])) < 1e-9
    assert recorder.metrics[-1]["mem/peak_gib"] >= recorder.metrics[0]["mem/peak_gib"]
