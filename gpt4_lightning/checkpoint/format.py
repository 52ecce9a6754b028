"""What a gpt4_lightning checkpoint holds beyond Lightning's own keys, and where its parts are named.

A checkpoint is what Lightning writes (`state_dict` with the model under `model.`, optimizer, schedulers,
loops, callback states — the data position, tokens seen, the non-finite counters) plus the extra keys below,
all plain data so that `torch.load(weights_only=True)` reads it:

    gpt4_config    the `GPT4Config` as a dict: generate/evaluate/export rebuild the model from it
    gpt4_data_dir  the prepared data directory: its manifest names the tokenizer (a mixture: its first source's)
    gpt4_data_sources  a mixture's sources, [{name, dir, weight}] (absent for one directory)
    gpt4_rng       every rank's torch RNG states (a resume on the same world size continues each stream)

Under FSDP the checkpoint is a torch.distributed.checkpoint directory: tensors in `*.distcp` shards listed
by `.metadata`, everything else in `meta.pt`. A new extra key is added here (`save_extras`/`load_extras`),
nowhere else.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

MODEL_PREFIX = "model."  # GPT4LitModule keeps the GPT4 as `self.model`
SHARDED_META = "meta.pt"  # Lightning's ModelParallelStrategy: the non-tensor part of a sharded checkpoint
DCP_METADATA = ".metadata"  # torch.distributed.checkpoint: which tensor lives in which shard file
CONFIG_KEY, DATA_DIR_KEY, RNG_KEY = "gpt4_config", "gpt4_data_dir", "gpt4_rng"
SOURCES_KEY = "gpt4_data_sources"


def save_extras(checkpoint: dict[str, Any], module: Any) -> None:
    """Add the extra keys to a checkpoint being saved by `module` (a `GPT4LitModule`); every rank calls it."""
    checkpoint[CONFIG_KEY] = dataclasses.asdict(module.model_config)
    checkpoint[DATA_DIR_KEY] = module.data_dir
    if getattr(module, "data_sources", None):
        checkpoint[SOURCES_KEY] = [dict(source) for source in module.data_sources]
    checkpoint[RNG_KEY] = gather_rng_states()


def load_extras(checkpoint: dict[str, Any]) -> None:
    """Restore what the extra keys hold into this process (the RNG streams) on resume."""
    restore_rng_states(checkpoint.get(RNG_KEY))


def describe(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What generate/evaluate/export report about a checkpoint: step, epoch, data directory (and sources)."""
    return {"global_step": checkpoint.get("global_step"), "epoch": checkpoint.get("epoch"),
            "data_dir": checkpoint.get(DATA_DIR_KEY), "data_sources": checkpoint.get(SOURCES_KEY)}


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
