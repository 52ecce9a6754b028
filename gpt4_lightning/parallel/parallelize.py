"""Parallelism applied to a `GPT4` from outside: the model code knows nothing of it.

`parallelize` applies, per decoder block and in this order:

1. activation checkpointing (every `ac_every`-th block): the block's activations are recomputed
   in backward instead of stored;
2. `torch.compile` of the block (in place, `nn.Module.compile`, so parameter names and
   checkpoints are the same compiled or not);
3. FSDP2 `fully_shard` of the block, then of the root (the `Transformer`), with a `MixedPrecisionPolicy`.

NOTE the order matters: compile sees the checkpointed block as one region (AC before compile), and
FSDP's all-gather/reshard hooks wrap the compiled, checkpointed block (FSDP last) — as torchtitan
does. Sharding per block lets FSDP free each block's gathered parameters after its forward.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from gpt4_lightning.model import GPT4
from gpt4_lightning.parallel.config import ParallelConfig
from gpt4_lightning.utils.names import torch_dtype

log = logging.getLogger(__name__)



def apply_activation_checkpointing(blocks: nn.ModuleList, every: int) -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for i in range(0, len(blocks), every):
        # the wrapper keeps state-dict keys unchanged (it strips its own prefix)
        blocks[i] = checkpoint_wrapper(blocks[i], preserve_rng_state=False)


def apply_compile(blocks: nn.ModuleList) -> None:
    for block in blocks:
        block.compile()  # in place: keys stay `blocks.i.…`, unlike torch.compile(block)'s `_orig_mod.`


def apply_fsdp(model: GPT4, mesh: object, cfg: ParallelConfig) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    cfg = cfg.for_precision("32-true")  # an "auto" left unresolved for a precision: the params' own dtype
    mp = MixedPrecisionPolicy(param_dtype=torch_dtype(cfg.param_dtype), reduce_dtype=torch_dtype(cfg.reduce_dtype))
    blocks = model.blocks
    for i, block in enumerate(blocks):
        # the last block's params are needed again at once by backward: keep them gathered
        reshard = cfg.reshard_after_forward and i < len(blocks) - 1
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)
    # the root's forward is what `loss`/`generate` call, and FSDP's gather/reshard hooks run on forward
    fully_shard(model.root, mesh=mesh, mp_policy=mp, reshard_after_forward=cfg.reshard_after_forward)


def init_sharded_weights(model: GPT4, seed: int) -> None:
    """`model.init_weights(seed)` for an FSDP2-sharded model: the same values as the unsharded model.

    One module at a time (never the whole model), its DTensor parameters are swapped for full-size
    local tensors, initialised with the module's own seeded generator, and this rank keeps its shard.
    """
    from torch.distributed.tensor import DTensor, distribute_tensor

    from gpt4_lightning.model.transformer import module_seed

    for name, module in model.init_modules():
        owners = [module, *(c for c in module.children() if isinstance(c, nn.Linear))]
        swapped = []
        for owner in owners:
            for pname, param in list(owner.named_parameters(recurse=False)):
                if isinstance(param, DTensor):
                    full = torch.empty(param.shape, dtype=param.dtype, device=param.to_local().device)
                    owner._parameters[pname] = nn.Parameter(full, requires_grad=param.requires_grad)
                    swapped.append((owner, pname, param, full))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(module_seed(seed, name))
            module.reset_parameters()
        with torch.no_grad():
            for owner, pname, param, full in swapped:
                owner._parameters[pname] = param
                # every rank holds the same full tensor: take the local shard without communication
                local = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
                param.to_local().copy_(local.to_local())


def parallelize(model: GPT4, cfg: ParallelConfig, mesh: object | None = None) -> GPT4:
    """Apply AC → compile → FSDP2 (when a data-parallel `mesh` is given) to `model` in place."""
    blocks = model.blocks
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(blocks, cfg.ac_every)
    if cfg.compile:
        apply_compile(blocks)
    if mesh is not None:
        apply_fsdp(model, mesh, cfg)
    log.info("parallelize: activation checkpointing %s, compile %s, FSDP2 %s",
             f"every {cfg.ac_every} block(s)" if cfg.activation_checkpointing else "off",
             "on" if cfg.compile else "off", f"over {mesh}" if mesh is not None else "off")
    return model
