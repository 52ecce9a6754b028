"""`GPT4LitModule`: the GPT4 and its autoregressive loss as a LightningModule."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics.aggregation import MeanMetric

from .model import GPT4, GPT4Config
from .optim import weight_decay_groups
from .parallelize import ParallelConfig, init_sharded_weights, parallelize

log = logging.getLogger(__name__)
OptimizerFactory = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


class GPT4LitModule(L.LightningModule):
    """Trains a `GPT4` on `(batch, seq_len + 1)` token windows with next-token cross-entropy.

    The model is built in `configure_model`, not `__init__`, so that a sharding strategy can
    create it on the meta device and shard it before any weight exists (scale-out issue).
    `optimizer` / `scheduler` are factories (Hydra `_partial_`): parameter groups -> optimizer,
    optimizer -> per-step scheduler.
    """

    def __init__(self, model: GPT4Config | dict[str, Any], optimizer: OptimizerFactory,
                 scheduler: SchedulerFactory | None = None, data_dir: str | None = None,
                 parallel: ParallelConfig | dict[str, Any] | None = None, init_seed: int | None = None,
                 nonfinite: str = "skip", nonfinite_max_consecutive: int = 10) -> None:
        super().__init__()
        if nonfinite not in ("skip", "stop"):
            raise ValueError(f"nonfinite={nonfinite!r} must be 'skip' or 'stop'")
        self.model_config = model if isinstance(model, GPT4Config) else GPT4Config.from_kwargs(**model)
        self.parallel = parallel if isinstance(parallel, ParallelConfig) else ParallelConfig(**(parallel or {}))
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.data_dir = data_dir  # recorded in checkpoints: generate/evaluate find the tokenizer there
        # weights seeded per module: the same initial model on 1 process, under DDP and sharded by FSDP2
        self.init_seed = init_seed
        self.model: GPT4 | None = None
        self.val_loss = MeanMetric()
        # non-finite loss guard: `skip` drops the step's update; `stop` (or too many skips in a row) stops
        # with a checkpoint of the weights from before the bad step (resilience.GracefulStop saves it)
        self.nonfinite, self.nonfinite_max_consecutive = nonfinite, nonfinite_max_consecutive
        self.nonfinite_steps = 0  # skipped so far (kept across resumes)
        self.nonfinite_consecutive = 0
        self.nonfinite_stop_step: int | None = None

    @property
    def stop_requested(self) -> bool:
        """Read by `resilience.GracefulStop`: checkpoint at the end of this step and stop."""
        return self.nonfinite_stop_step is not None

    def configure_model(self) -> None:
        """Build on the meta device, apply parallelism (FSDP2 shards it when the strategy gives a mesh),
        then allocate and initialise only what this rank holds: the same path for one device, DDP
        and FSDP2, and a 2B model never exists whole on a rank."""
        if self.model is not None:
            return
        mesh = self.device_mesh  # set by ModelParallelStrategy (FSDP2), else None
        with torch.device("meta"):
            model = GPT4.from_config(self.model_config)
        parallelize(model, self.parallel, mesh["data_parallel"] if mesh is not None else None)
        model.to_empty(device=self.device)
        with torch.no_grad():
            if self.init_seed is None:
                model.init_weights()
            elif mesh is None:
                model.init_weights(self.init_seed)
            else:
                init_sharded_weights(model, self.init_seed)
        self.model = model

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss = self.model.loss(batch)
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)  # mean over ranks: the global batch's loss
        self.log("train/ppl", torch.exp(loss.detach().clamp(max=30)))
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])  # also with logger=none (no LR monitor)
        return loss

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self.val_loss.update(self.model.loss(batch), weight=batch.shape[0])

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()  # synced over ranks
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)
        self.log("val/ppl", torch.exp(loss.clamp(max=30)))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Logs the gradient norm (before clipping: the norm the clip threshold is compared with) and guards
        against a non-finite loss or gradient: the norm is global (DDP grads are all-reduced, FSDP's are
        DTensors), so every rank takes the same decision. Dropping the gradients makes the optimizer
        skip every parameter: no update, no change to its moments."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.nn.utils.get_total_norm(grads)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        self.log("train/grad_norm", norm)
        if bool(torch.isfinite(norm)):
            self.nonfinite_consecutive = 0
            return
        optimizer.zero_grad(set_to_none=True)
        self.nonfinite_steps += 1
        self.nonfinite_consecutive += 1
        self.log("train/nonfinite_steps", float(self.nonfinite_steps))
        step = self.trainer.global_step
        if self.nonfinite == "stop" or self.nonfinite_consecutive > self.nonfinite_max_consecutive:
            log.error("non-finite loss or gradient norm at step %d: update skipped, stopping", step)
            self.nonfinite_stop_step = step
        else:
            log.warning("non-finite loss or gradient norm at step %d: update skipped (%d so far)", step,
                        self.nonfinite_steps)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(weight_decay_groups(self.model))
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # plain data only, so generate/evaluate can rebuild the model with torch.load(weights_only=True)
        checkpoint["gpt4_config"] = dataclasses.asdict(self.model_config)
        checkpoint["gpt4_data_dir"] = self.data_dir
        checkpoint["gpt4_nonfinite_steps"] = self.nonfinite_steps
        checkpoint["gpt4_rng"] = gather_rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite_steps = int(checkpoint.get("gpt4_nonfinite_steps", 0))
        restore_rng_states(checkpoint.get("gpt4_rng"))


def gather_rng_states() -> list[dict[str, list[int]]]:
    """Every rank's torch RNG states (CPU, and CUDA when used), as plain lists: checkpoints stay
    loadable with weights_only, and each rank resumes its own random stream (e.g. dropout)."""
    state = {"cpu": torch.get_rng_state().tolist()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    if not (dist.is_available() and dist.is_initialized()):
        return [state]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def restore_rng_states(states: list[dict[str, list[int]]] | None) -> None:
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    if not states or len(states) != world:  # another number of ranks: the seeded streams restart
        if states:
            log.info("checkpoint has RNG states of %d ranks, this run has %d: not restored", len(states), world)
        return
    torch.set_rng_state(torch.tensor(states[rank]["cpu"], dtype=torch.uint8))
    if "cuda" in states[rank] and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(states[rank]["cuda"], dtype=torch.uint8))


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 30.0))
