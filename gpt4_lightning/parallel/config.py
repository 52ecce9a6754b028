"""The typed `parallel` key: what `parallelize` applies to the model, on any trainer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gpt4_lightning.utils.names import DTYPE_NAMES


@dataclass
class ParallelConfig:
    """The `parallel` key: what `parallelize` applies to the model, on any trainer.

    activation_checkpointing: recompute block activations in backward (memory for compute).
    ac_every: checkpoint every k-th block only (1 = all).
    compile: `torch.compile` each decoder block.
    param_dtype / reduce_dtype: FSDP2 mixed precision ("bf16", "fp32", "fp16" or None = the params' dtype):
        params all-gathered and computed in `param_dtype`, gradients reduce-scattered in `reduce_dtype`.
        "auto" (the default; see `for_precision`): bf16 / fp32 with precision=bf16-mixed, else None.
    reshard_after_forward: free gathered block params after forward (ZeRO-3); False keeps them
        until backward (ZeRO-2-like: more memory, less communication).
    collective_timeout_s: a rank hung in a collective ends the run after this many seconds; null: 600 on GPU
        (NCCL), 900 on CPU (gloo). The in-training evals run inside it (the other ranks wait).
    """

    activation_checkpointing: bool = False
    ac_every: int = 1
    compile: bool = False
    param_dtype: str | None = "auto"
    reduce_dtype: str | None = "auto"
    reshard_after_forward: bool = True
    collective_timeout_s: int | None = None

    def __post_init__(self) -> None:
        if self.collective_timeout_s is not None and self.collective_timeout_s < 1:
            raise ValueError(f"parallel.collective_timeout_s={self.collective_timeout_s} must be >= 1 or null")
        if self.ac_every < 1:
            raise ValueError(f"parallel.ac_every={self.ac_every} must be >= 1 (1 checkpoints every block)")
        for key in ("param_dtype", "reduce_dtype"):
            value = getattr(self, key)
            if value is not None and value not in (*DTYPE_NAMES, "auto"):
                raise ValueError(f"parallel.{key}={value!r} must be one of {sorted(DTYPE_NAMES)}, auto or null")

    def for_precision(self, precision: str) -> ParallelConfig:
        """Resolve "auto" for Lightning's `precision`: with bf16-mixed, FSDP2 all-gathers bf16 parameters
        and reduce-scatters fp32 gradients (torchtitan's recipe: half the all-gather traffic, no fp32
        weights for autocast to cast and cache, fp32 master weights and optimizer state kept); any
        other precision leaves the parameters' own dtype."""
        mixed = "bf16-mixed" in precision
        auto = {"param_dtype": "bf16" if mixed else None, "reduce_dtype": "fp32" if mixed else None}
        return dataclasses.replace(self, **{k: auto[k] for k in auto if getattr(self, k) == "auto"})
