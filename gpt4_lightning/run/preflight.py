"""The memory preflight of `train`: the run's planned peak per rank against what this machine has, before the
data, the model or Lightning exists.

`preflight.mode=error` (default) refuses a run whose plan (`memory.plan_memory`, depth-extrapolated: seconds
for gpt4_2b) plus the process's own overhead exceeds what one rank may use (`memory.available`), with one line:
the plan and its biggest parts, what is available, and the changes the planner says fit. `warn` logs that line
and goes on; `off` skips it. Within 10 % of the limit a warning is logged. A run that fits by a wide margin
(an upper bound, no simulation) is passed at once. Global rank 0 checks for all ranks (they plan the same).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from omegaconf import DictConfig

from gpt4_lightning.memory.available import Available, cpu_available, cuda_available
from gpt4_lightning.memory.plan import GIB, MemoryPlan, plan_memory
from gpt4_lightning.model import GPT4Config
from gpt4_lightning.parallel.config import ParallelConfig
from gpt4_lightning.run.checks import _device_count, uses_fsdp
from gpt4_lightning.utils.env import is_global_rank_zero

log = logging.getLogger(__name__)

NEAR = 0.9  # warn above this share of the available memory
OVERHEAD = {"cpu": 1 * GIB, "cuda": 1 * GIB}  # interpreter + torch + Lightning / CUDA context + NCCL, per rank
SCALE_OUT = 64  # try up to this many times the processes


class PreflightError(ValueError):
    """The run's plan does not fit this machine (`preflight.mode=error`)."""


@dataclass(frozen=True)
class RunShape:
    """What one rank's training step looks like to the planner, from a run's config."""

    model: GPT4Config
    fsdp: bool
    devices: int  # per node
    num_nodes: int
    precision: str  # Lightning's spelling
    micro_batch: int
    seq_len: int
    parallel: ParallelConfig
    device: str  # cpu | cuda
    document_mask: bool = False
    async_checkpoint: bool = False  # checkpoint.async_save: the training state staged in host memory

    @property
    def world(self) -> int:
        return self.devices * self.num_nodes

    def plan(self) -> MemoryPlan:
        parallel = self.parallel.for_precision(self.precision)
        strategy = "fsdp" if self.fsdp else "ddp" if self.world > 1 else "single"
        sharded = {} if not self.fsdp else dict(param_dtype=parallel.param_dtype, reduce_dtype=parallel.reduce_dtype,
                                                reshard_after_forward=parallel.reshard_after_forward)
        return plan_memory(self.model, strategy=strategy, world_size=self.world, precision=self.precision,
                           micro_batch=self.micro_batch, seq_len=self.seq_len,
                           activation_checkpointing=parallel.activation_checkpointing, ac_every=parallel.ac_every,
                           device=self.device, document_mask=self.document_mask, **sharded)

    def upper_bound(self) -> int:
        """Bytes per rank no plan of this shape exceeds, from the config alone (no model, no simulation):
        parameters over-counted (every head with its own k/v, a GLU feedforward, learned positions), fp32 with
        gradients, AdamW's two states and DDP's buckets, none sharded; activations about twice what the planner
        finds for these blocks (a test checks both against the planner)."""
        cfg, tokens = self.model, self.micro_batch * self.seq_len
        inner = cfg.heads * cfg.dim_head
        params = (2 * cfg.num_tokens * cfg.dim + cfg.max_seq_len * cfg.dim
                  + cfg.depth * (4 * cfg.dim * inner + 3 * cfg.ff_mult * cfg.dim ** 2 + 16 * cfg.dim))
        activations = tokens * 4 * (40 * cfg.dim * cfg.depth + 8 * cfg.num_tokens) + 8 * cfg.heads * self.seq_len ** 2
        return 5 * params * 4 + activations


def run_shape(run, trainer: DictConfig, gpus: int) -> RunShape:
    """The shape of `run` (a `TrainConfig`) under `trainer` (its composed `trainer` group)."""
    accelerator = str(trainer.get("accelerator", "auto"))
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and gpus > 0)
    found = _device_count(trainer.get("devices", "auto"))
    devices = found[0] if found is not None else (gpus if cuda else 1)
    return RunShape(model=run.model, fsdp=uses_fsdp(trainer), devices=devices,
                    num_nodes=int(trainer.get("num_nodes", 1)), precision=str(trainer.get("precision", "32-true")),
                    micro_batch=run.data.batch_size, seq_len=run.data.seq_len, parallel=run.parallel,
                    device="cuda" if cuda else "cpu", document_mask=run.data.document_mask,
                    async_checkpoint=run.checkpoint.async_save)


def gib(nbytes: float) -> str:
    """`49.7` GiB, `0.24` below one."""
    return f"{nbytes / GIB:.1f}" if nbytes >= GIB else f"{nbytes / GIB:.2g}"


def staging(plan: MemoryPlan, shape: RunShape) -> int:
    """Host bytes per rank a background checkpoint stages (`MemoryPlan.checkpoint_staging`); 0 for sync saves."""
    return plan.checkpoint_staging if shape.async_checkpoint else 0


def _needed(plan: MemoryPlan, shape: RunShape) -> int:
    """Bytes per rank of the device's memory: on CPU the staged checkpoint lives there too."""
    return plan.peak + OVERHEAD[shape.device] + (staging(plan, shape) if shape.device == "cpu" else 0)


def describe(plan: MemoryPlan) -> str:
    """`49.7 GiB (AdamW state 18.3, activations 11.4, params 9.2, grads 9.2; peak in forward)`: the biggest parts."""
    parts = {"params": plan.params, "grads": plan.grads, "AdamW state": plan.optimizer,
             "FSDP/DDP buffers": plan.comm_buffers, "activations": plan.activations, "temporaries": plan.transient}
    big = sorted(((v, k) for k, v in parts.items() if v >= 0.05 * plan.peak), reverse=True)
    return (f"{gib(plan.peak)} GiB ({', '.join(f'{k} {gib(v)}' for v, k in big)}; peak in "
            f"{plan.peak_phase})")


def suggest(shape: RunShape, per_rank_limit: int, gpus_per_node: int) -> list[str]:
    """Overrides that make the plan fit `per_rank_limit`, cheapest first: activation checkpointing and bf16
    weights each alone, else both; then the largest smaller batch, and the fewest processes (FSDP) that fit, on
    top of those. Each candidate is planned (seconds each for gpt4_2b)."""

    def needed_if_fits(s: RunShape) -> int | None:
        needed = _needed(s.plan(), s)
        return needed if needed <= per_rank_limit else None

    def shown(overrides: list[str], needed: int) -> str:
        return f"{' '.join(overrides)} ({gib(needed)} GiB)"

    changes = []
    if not shape.parallel.activation_checkpointing:
        changes.append(("parallel.activation_checkpointing=true", lambda s: dataclasses.replace(
            s, parallel=dataclasses.replace(s.parallel, activation_checkpointing=True))))
    if shape.precision not in ("bf16-true", "16-true"):
        changes.append(("precision=bf16_true", lambda s: dataclasses.replace(s, precision="bf16-true")))
    found = []
    for override, change in changes:
        if (needed := needed_if_fits(change(shape))) is not None:
            found.append(shown([override], needed))
    base, base_overrides = shape, []
    if not found and changes:  # every change at once, then a smaller batch or more processes on top
        for override, change in changes:
            base, base_overrides = change(base), [*base_overrides, override]
        if len(changes) > 1 and (needed := needed_if_fits(base)) is not None:
            return [shown(base_overrides, needed)]
    batch = base.micro_batch // 2
    while batch >= 1:
        if (needed := needed_if_fits(dataclasses.replace(base, micro_batch=batch))) is not None:
            found.append(shown([*base_overrides, f"data.batch_size={batch}"], needed))
            break
        batch //= 2
    per_node = base.devices if base.device == "cpu" else max(gpus_per_node, 1)  # CPU ranks share one node's memory
    world = base.world * 2
    while world <= base.world * SCALE_OUT:
        if base.device == "cuda" and world <= per_node:
            grown, overrides = dataclasses.replace(base, fsdp=True, devices=world), [f"trainer.devices={world}"]
        else:
            nodes = -(-world // per_node)
            grown = dataclasses.replace(base, fsdp=True, devices=per_node, num_nodes=nodes)
            overrides = [*([f"trainer.devices={per_node}"] if per_node != base.devices else []),
                         f"trainer.num_nodes={nodes}"]
        if (needed := needed_if_fits(grown)) is not None:
            found.append(shown([*base_overrides, *([] if base.fsdp else ["trainer=fsdp"]), *overrides], needed))
            break
        world = grown.world * 2
    return found


def check_memory(run, trainer: DictConfig, mode: str, limit_gib: float | None = None) -> None:
    """Plan `run` and compare with this machine (or `limit_gib` per rank); see the module docstring."""
    if mode == "off" or not is_global_rank_zero():
        return
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    shape = run_shape(run, trainer, gpus)
    if limit_gib is not None:
        available = Available(int(limit_gib * GIB), f"preflight.memory_gib={limit_gib:g}")
    elif shape.device == "cuda":
        found = _device_count(trainer.get("devices", "auto"))
        available = cuda_available(found[1][0] if found and found[1] else 0)
    else:
        available = cpu_available(shape.devices)
    bound = shape.upper_bound() * (2 if shape.async_checkpoint else 1)  # staging < the bound's parameter share
    if bound + OVERHEAD[shape.device] <= 0.5 * available.per_rank:
        return  # fits by a wide margin: no simulation needed
    plan = shape.plan()
    if shape.device == "cuda" and shape.async_checkpoint:
        check_host_staging(plan, shape, mode)
    needed = _needed(plan, shape)
    if needed <= NEAR * available.per_rank:
        return
    ranks = f"{shape.devices} {shape.device} rank(s) per node" if shape.devices > 1 else f"1 {shape.device} rank"
    staged = (f" + {gib(staging(plan, shape))} GiB staged by checkpoint.async_save"
              if shape.device == "cpu" and shape.async_checkpoint else "")
    what = (f"preflight: this run's memory plan is {describe(plan)} per rank + {OVERHEAD[shape.device] / GIB:.0f} "
            f"GiB for the process{staged}, but {available.source} leaves {gib(available.per_rank)} GiB per rank "
            f"({ranks})")
    if needed <= available.per_rank:
        log.warning("%s: close to the limit", what)
        return
    fixes = suggest(shape, available.per_rank, gpus)
    advice = ("fits with: " + "; or ".join(fixes)) if fixes else "no change the planner tried fits"
    message = f"{what}: it would be killed for lack of memory; {advice}; or preflight.mode=warn to try anyway"
    if mode == "warn":
        log.warning("%s", message)
        return
    raise PreflightError(message)


def check_host_staging(plan: MemoryPlan, shape: RunShape, mode: str) -> None:
    """On CUDA a background checkpoint stages every local rank's state in the node's host memory (pinned)."""
    host = cpu_available(1)
    needed = shape.devices * staging(plan, shape)
    if needed <= NEAR * host.per_rank:
        return
    message = (f"preflight: checkpoint.async_save stages {gib(needed)} GiB of training state in host memory "
               f"({shape.devices} rank(s) x {gib(staging(plan, shape))} GiB), but {host.source} leaves "
               f"{gib(host.per_rank)} GiB; checkpoint.async_save=false, or more FSDP ranks")
    if mode == "warn" or needed <= host.per_rank:
        log.warning("%s", message)
        return
    raise PreflightError(message)

