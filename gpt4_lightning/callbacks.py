"""Callbacks: throughput (tokens/s, TFLOP/s, MFU) and tokens seen."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops

from .flops import flops_per_token, matmul_params


def peak_flops(device: torch.device, precision: str, peak_tflops: float | None) -> float | None:
    """Peak FLOP/s of one device: `peak_tflops` when given, else Lightning's table of known GPUs for
    the precision's matmul dtype; None on CPU (no MFU) unless given."""
    if peak_tflops is not None:
        return peak_tflops * 1e12
    if device.type != "cuda":
        return None
    dtype = torch.bfloat16 if "bf16" in precision else torch.float16 if "16" in precision else torch.float32
    return get_available_flops(device, dtype)


class ThroughputLogger(L.Callback):
    """Every `log_every_n_steps` optimizer steps, logs per rank (`perf/device_*`) and for all ranks:
    tokens/s and TFLOP/s (FLOPs from `flops.flops_per_token` at the batch's real sequence length),
    MFU where the device's peak is known, and `perf/tokens_seen` (kept across resumes)."""

    def __init__(self, log_every_n_steps: int = 10, peak_tflops: float | None = None) -> None:
        self.log_every_n_steps, self.peak_tflops = log_every_n_steps, peak_tflops
        self.tokens_seen = 0  # all ranks
        self._window_tokens = 0  # this rank, since the last log
        self._window_start: float | None = None
        self._n_matmul = 0
        self._peak: float | None = None
        self._last_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._n_matmul = matmul_params(pl_module)
        self._peak = peak_flops(pl_module.device, str(trainer.precision), self.peak_tflops)
        self._window_start, self._window_tokens = time.perf_counter(), 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: torch.Tensor, batch_idx: int) -> None:
        batch_tokens = batch.shape[0] * (batch.shape[1] - 1)
        self._window_tokens += batch_tokens
        self.tokens_seen += batch_tokens * trainer.world_size
        step, stepped = trainer.global_step, trainer.global_step != self._last_step  # False while accumulating
        self._last_step = step
        if stepped and step % self.log_every_n_steps == 0:
            now = time.perf_counter()
            seconds, tokens = now - self._window_start, self._window_tokens
            self._window_start, self._window_tokens = now, 0
            device_tps = tokens / seconds
            device_flops = device_tps * flops_per_token(pl_module.model_config, self._n_matmul, batch.shape[1] - 1)
            metrics = {
                "perf/tokens_seen": float(self.tokens_seen),
                "perf/device_tokens_per_s": device_tps,
                "perf/tokens_per_s": device_tps * trainer.world_size,
                "perf/device_tflops": device_flops / 1e12,
                "perf/tflops": device_flops * trainer.world_size / 1e12,
            }
            if self._peak:
                metrics["perf/mfu"] = device_flops / self._peak
            pl_module.log_dict(metrics, rank_zero_only=True)

    def state_dict(self) -> dict[str, Any]:
        return {"tokens_seen": self.tokens_seen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tokens_seen = int(state_dict["tokens_seen"])
