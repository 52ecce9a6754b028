"""Callbacks: throughput (tokens/s, TFLOP/s, MFU) and tokens seen; peak memory; a data mixture's progress.

`PeakMemory` (in `conf/callbacks/default.yaml`): baseline at `setup` (Lightning calls callbacks' setup
before `configure_model` builds the weights), peak reset at `on_train_start`, and every `log_every_n_steps`
optimizer steps it logs, as the maximum over ranks, `mem/peak_gib` (the process's peak since the reset),
`mem/baseline_gib` and `mem/peak_above_baseline_gib` (what the planner predicts). CPU: peak RSS (Linux
`VmHWM`, reset through `/proc/self/clear_refs`; elsewhere the peak since the process started); CUDA:
`torch.cuda.max_memory_allocated`, and `mem/reserved_gib` (the caching allocator's peak).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops

from gpt4_lightning.memory.rss import current_rss, peak_rss, reset_peak_rss
from gpt4_lightning.training.flops import flops_per_token, matmul_params
from gpt4_lightning.training.steps import OptimizerSteps

GIB = 2**30
log = logging.getLogger(__name__)


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
    MFU where the device's peak is known, and `perf/tokens_seen` (kept across resumes). Not Lightning's
    `ThroughputMonitor`: it calls `torch.cuda.synchronize()` after every training batch (a host-device sync per
    step, which this project's steps avoid), needs `flops_per_batch` fixed up front (our FLOPs follow each batch's
    sequence length) and keeps no count across a resume."""

    def __init__(self, log_every_n_steps: int = 10, peak_tflops: float | None = None) -> None:
        self.log_every_n_steps, self.peak_tflops = log_every_n_steps, peak_tflops
        self.tokens_seen = 0  # all ranks
        self._window_tokens = 0  # this rank, since the last log
        self._window_start: float | None = None
        self._n_matmul = 0
        self._peak: float | None = None
        self._steps = OptimizerSteps()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._n_matmul = matmul_params(pl_module)
        self._peak = peak_flops(pl_module.device, str(trainer.precision), self.peak_tflops)
        self._window_start, self._window_tokens = time.perf_counter(), 0
        self._steps.start(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: torch.Tensor, batch_idx: int) -> None:
        batch_tokens = batch.shape[0] * (batch.shape[1] - 1)
        self._window_tokens += batch_tokens
        self.tokens_seen += batch_tokens * trainer.world_size
        if self._steps.stepped(trainer) and trainer.global_step % self.log_every_n_steps == 0:
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


# --- peak memory ---------------------------------------------------------------------------------

class PeakMemory(L.Callback):
    """Logs the training steps' peak memory, the maximum over ranks, every `log_every_n_steps` optimizer steps:

    `mem/peak_gib`: the process's peak since training started (CPU: peak RSS; CUDA:
    `torch.cuda.max_memory_allocated`); `mem/baseline_gib`: the same measure at `setup`, before
    `configure_model` builds the weights; `mem/peak_above_baseline_gib`: the peak minus this rank's
    baseline, what `plan_memory` predicts. On CUDA also `mem/reserved_gib` (the caching allocator's peak)."""

    def __init__(self) -> None:
        self.baseline = 0
        self.cuda = False
        self._steps = OptimizerSteps()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning calls callbacks' setup before configure_model: nothing of the model exists yet
        self.cuda = pl_module.device.type == "cuda"
        self.baseline = torch.cuda.memory_allocated(pl_module.device) if self.cuda else current_rss()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        else:
            reset_peak_rss()
        self._steps.start(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        stepped = self._steps.stepped(trainer)
        if not stepped or trainer.global_step % trainer.log_every_n_steps != 0:  # the all-reduce is a sync
            return
        if self.cuda:
            peak = torch.cuda.max_memory_allocated(pl_module.device)
            reserved = torch.cuda.max_memory_reserved(pl_module.device)
        else:
            peak, reserved = peak_rss(), 0
        values = torch.tensor([peak, self.baseline, peak - self.baseline, reserved], dtype=torch.float64,
                              device=pl_module.device) / GIB
        values = trainer.strategy.reduce(values, reduce_op="max")  # every rank reaches this at the same step
        names = ["mem/peak_gib", "mem/baseline_gib", "mem/peak_above_baseline_gib", "mem/reserved_gib"]
        metrics = {name: float(v) for name, v in zip(names, values.tolist(), strict=True)}
        if not self.cuda:
            metrics.pop("mem/reserved_gib")
        pl_module.log_dict(metrics, rank_zero_only=True)


# --- data mixture --------------------------------------------------------------------------------

class MixtureProgress(L.Callback):
    """With `data=mix`, every `log_every_n_steps` optimizer steps: `data/<source>/windows` (windows drawn from the
    source so far, all ranks) and `data/<source>/epoch`; a source starting another epoch is logged (info) when
    seen. Nothing without a mixture."""

    def __init__(self, log_every_n_steps: int = 10) -> None:
        self.log_every_n_steps = log_every_n_steps
        self._epochs: dict[str, int] = {}
        self._steps = OptimizerSteps()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._steps.start(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: torch.Tensor, batch_idx: int) -> None:
        progress = getattr(trainer.datamodule, "source_progress", None)
        if progress is None or not self._steps.stepped(trainer) or trainer.global_step % self.log_every_n_steps:
            return
        metrics = {}
        for name, windows, epoch in progress():
            metrics[f"data/{name}/windows"], metrics[f"data/{name}/epoch"] = float(windows), float(epoch)
            if epoch > self._epochs.get(name, epoch) and trainer.is_global_zero:
                log.info("data source %s is in its epoch %d (it repeats: its share is larger than its windows)",
                         name, epoch)
            self._epochs[name] = epoch
        if metrics:
            pl_module.log_dict(metrics, rank_zero_only=True)


# --- data statistics -----------------------------------------------------------------------------

class DataStatistics(L.Callback):
    """At the start of training (rank 0, once per launch): `data/unigram_entropy`, the loss of a model that knows
    only token frequencies, from a bounded sample of the train split (`data.prepare.stats`): the reference line of the
    run's report. Written straight to the loggers at the current step (the `log` API has no step for this hook)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        if not trainer.is_global_zero or not trainer.loggers or datamodule is None:
            return
        from gpt4_lightning.data.prepare.stats import unigram_entropy

        sources = [(s.dir, s.weight) for s in getattr(datamodule, "sources", [])] or [(datamodule.data_dir, 1.0)]
        entropy = unigram_entropy(sources)
        if entropy is not None:
            for logger in trainer.loggers:
                logger.log_metrics({"data/unigram_entropy": entropy}, step=trainer.global_step)
