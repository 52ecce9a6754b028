"""`GPT4LitModule`: the GPT4 and its autoregressive loss as a LightningModule.

It holds the steps, the optimizer set-up and the model build, nothing else: the non-finite guard, throughput,
memory, checkpointing and signals are callbacks (`conf/callbacks/default.yaml`), the checkpoint's extra keys
belong to `gpt4_lightning.checkpoint.format`, and parallelism is applied from outside (`parallelize`).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torchmetrics.aggregation import MeanMetric

from gpt4_lightning.checkpoint import format as checkpoint_format
from gpt4_lightning.model import GPT4, GPT4Config
from gpt4_lightning.model.kernels import document_ids
from gpt4_lightning.parallel.config import ParallelConfig
from gpt4_lightning.parallel.parallelize import init_sharded_weights, parallelize
from gpt4_lightning.training.devices import loss_scaler
from gpt4_lightning.training.optim import weight_decay_groups

logger = logging.getLogger(__name__)

OptimizerFactory = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


class GPT4LitModule(L.LightningModule):
    """Trains a `GPT4` on `(batch, seq_len + 1)` token windows with next-token cross-entropy.

    The model is built in `configure_model`, not `__init__`, so that a sharding strategy can
    create it on the meta device and shard it before any weight exists.
    `optimizer` / `scheduler` are factories (Hydra `_partial_`): parameter groups -> optimizer,
    optimizer -> per-step scheduler. `data_dir` is recorded in checkpoints (its manifest names the
    tokenizer), and a mixture's `data_sources` ({name, dir, weight} each); `init_seed` seeds the weights per
    module, so 1 process, DDP and FSDP2 start identical. `document_mask`: each token attends only within its
    document (the EOS-separated documents a window concatenates; `eos_id`, default the data manifest's).
    """

    def __init__(self, model: GPT4Config | dict[str, Any], optimizer: OptimizerFactory,
                 scheduler: SchedulerFactory | None = None, data_dir: str | None = None,
                 parallel: ParallelConfig | None = None, init_seed: int | None = None,
                 data_sources: list[dict[str, Any]] | None = None, document_mask: bool = False,
                 eos_id: int | None = None) -> None:
        super().__init__()
        self.model_config = model if isinstance(model, GPT4Config) else GPT4Config.from_kwargs(**model)
        self.parallel = parallel or ParallelConfig()
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.data_dir, self.init_seed, self.data_sources = data_dir, init_seed, data_sources
        self.model: GPT4 | None = None
        self.document_mask, self.eos_id = document_mask, eos_id
        self.val_losses = torch.nn.ModuleList([MeanMetric()])  # one per val loader (a mixture: one per source)

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

    def setup(self, stage: str) -> None:
        if self.document_mask and self.eos_id is None:  # the DataModule has opened its manifest by now
            manifest = getattr(getattr(self.trainer, "datamodule", None), "manifest", None)
            if manifest is None:
                raise ValueError("data.document_mask=true needs the EOS id: train with the GPT4DataModule (its "
                                 "manifest has it) or pass eos_id")
            self.eos_id = manifest.eos_id
        if self.document_mask:
            logger.info("document masking on: a token attends only within its document (EOS id %d)", self.eos_id)

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if getattr(datamodule, "checks_token_ids", False) and datamodule.max_token_id <= self.model_config.num_tokens:
            # the DataModule checks each batch's ids on the host (`on_before_batch_transfer`): forward's check
            # would read them back from the device, a host-device sync every step
            self.model.checks_token_values = False

    def documents(self, batch: Tensor) -> Tensor | None:
        """`(b, n + 1)` windows -> their document ids with document masking, else None."""
        return document_ids(batch, self.eos_id) if self.document_mask else None

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss = self.model.loss(batch, self.documents(batch))
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)  # mean over ranks: the global batch's loss
        self.log("train/ppl", torch.exp(loss.detach().clamp(max=30)))
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])  # also with logger=none (no LR monitor)
        return loss

    def validation_step(self, batch: Tensor, batch_idx: int, dataloader_idx: int = 0) -> None:
        while len(self.val_losses) <= dataloader_idx:
            self.val_losses.append(MeanMetric().to(self.device))
        self.val_losses[dataloader_idx].update(self.model.loss(batch, self.documents(batch)), weight=batch.shape[0])

    def on_validation_epoch_end(self) -> None:
        """`val/loss`; for a mixture also `val/<source>/loss` per source and `val/loss` their weighted mean."""
        losses = []
        for metric in self.val_losses:
            losses.append(metric.compute() if metric.update_called else None)  # compute() syncs over ranks
            metric.reset()
        sources = getattr(getattr(self.trainer, "datamodule", None), "val_sources", None) or []
        if sources:
            total, seen = torch.zeros((), device=self.device), 0.0
            for (name, weight, _), loss in zip(sources, losses, strict=False):
                if loss is not None:
                    self.log(f"val/{name}/loss", loss, sync_dist=False)
                    total, seen = total + weight * loss, seen + weight
            loss = total / seen if seen else None
        else:
            loss = losses[0]
        if loss is not None:
            self.log("val/loss", loss, prog_bar=True, sync_dist=False)
            self.log("val/ppl", torch.exp(loss.clamp(max=30)))

    def configure_optimizers(self) -> dict[str, Any]:
        factory = self.optimizer_factory
        if loss_scaler(self.trainer) is not None and getattr(factory, "keywords", {}).get("fused"):
            # a fused step unscales the gradients itself, after clipping: clipping would see scaled ones
            logger.info("optim.fused=false: trainer.precision=%s scales the loss (GradScaler)", self.trainer.precision)
            factory = functools.partial(factory, fused=False)
        optimizer = factory(weight_decay_groups(self.model))
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clips as Lightning's base precision plugin does where there is no loss scaler: its mixed-precision
        plugin overrides that only to refuse any optimizer that could unscale gradients itself (fused AdamW),
        also under bf16-mixed, where nothing is scaled. With a scaler `configure_optimizers` builds the unfused
        optimizer and Lightning unscales before this hook."""
        if not gradient_clip_val or loss_scaler(self.trainer) is not None:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        else:  # what the plugin would do, in its parameter order (the norm's sum: bitwise the same)
            plugin = self.trainer.precision_plugin
            if gradient_clip_algorithm in (None, "norm"):
                L.pytorch.plugins.Precision.clip_grad_by_norm(plugin, optimizer, gradient_clip_val)
            else:
                L.pytorch.plugins.Precision.clip_grad_by_value(plugin, optimizer, gradient_clip_val)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint_format.save_extras(checkpoint, self)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint_format.load_extras(checkpoint)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 30.0))
