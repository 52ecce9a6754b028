"""The typed `checkpoint` key: when a run saves and how many step checkpoints it keeps (`atomic.AtomicCheckpoint`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CheckpointConfig:
    """every_n_steps: a checkpoint every this many optimizer steps, plus one at the end and one on SIGTERM/SIGUSR1.
    keep_last: keep only the newest k step checkpoints (null: all); the target of `last.ckpt` is always kept.
    keep_every: besides those, keep every checkpoint whose step is a multiple of this for good (later evaluation).
    async_save: stage the state in host memory and write it in the background while training goes on (DCP
    `async_save` under FSDP); published once complete on every rank. Costs a copy of this rank's training state
    in host memory (weights and optimizer moments: 12 bytes a parameter in fp32, divided over the FSDP shards).
    Every checkpoint carries checksums, verified on load (`integrity`)."""

    every_n_steps: int = 100
    keep_last: int | None = None
    keep_every: int | None = None
    async_save: bool = False

    def __post_init__(self) -> None:
        if self.every_n_steps <= 0:
            raise ValueError(f"checkpoint.every_n_steps={self.every_n_steps} must be an integer > 0")
        if self.keep_last is not None and self.keep_last < 1:
            raise ValueError(f"checkpoint.keep_last={self.keep_last} must be >= 1 or null (keep all)")
        if self.keep_every is not None and self.keep_every < 1:
            raise ValueError(f"checkpoint.keep_every={self.keep_every} must be >= 1 or null (no step kept for good)")
