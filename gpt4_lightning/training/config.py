"""The typed configs of the training groups: `optim`, `scheduler`, `trainer`, and the `nonfinite`, `eval` and
`metrics` keys.

Hydra types every value against these at compose time (a misspelt key or a wrongly typed value fails before
anything runs); `__post_init__` holds the range checks, run when a composed config becomes these objects.
`optim`, `scheduler` and `trainer` are Hydra `_target_` nodes: `instantiate` builds what they describe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gpt4_lightning.training.schedule import check_schedule, lr_multiplier

NONFINITE_MODES = ("skip", "stop")  # training.nonfinite.NonFiniteGuard


@dataclass
class NonFiniteConfig:
    """`nonfinite`: what a NaN/Inf loss or gradient norm does (`nonfinite.NonFiniteGuard`).

    mode: skip (the step's update is skipped, logged as train/nonfinite_steps) | stop (checkpoint the weights from
        before the bad step and exit with an error).
    max_consecutive: with skip, stop as with `stop` after this many bad steps in a row.
    """

    mode: str = "skip"
    max_consecutive: int = 10

    def __post_init__(self) -> None:
        if self.mode not in NONFINITE_MODES:
            raise ValueError(f"nonfinite.mode={self.mode!r} must be 'skip' or 'stop'")
        if self.max_consecutive < 0:
            raise ValueError(f"nonfinite.max_consecutive={self.max_consecutive} must be >= 0")


@dataclass
class EvalConfig:
    """`eval`: lm-eval tasks scored on the model during training (`downstream.DownstreamEval`; needs `.[eval]`).

    tasks: comma-separated task names (gpt4l_next_line is built in); null: off.
    every_n_steps: every this many optimizer steps (0: off); logs eval/<task>/<metric>.
    limit: items per task each time (null: every item).
    """

    tasks: str | None = None
    every_n_steps: int = 0
    limit: int | None = 100

    def __post_init__(self) -> None:
        if self.every_n_steps < 0:
            raise ValueError(f"eval.every_n_steps={self.every_n_steps} must be >= 0 (0: off)")
        if self.every_n_steps and not self.tasks:
            raise ValueError("eval.every_n_steps is set but eval.tasks is not: add eval.tasks=gpt4l_next_line (or "
                             "another lm-eval task with local data)")


@dataclass
class MetricsConfig:
    """`metrics`: what the throughput logger needs to know. peak_tflops: one device's peak for MFU; null: Lightning's
    table of known GPUs (no MFU on CPU)."""

    peak_tflops: float | None = None

    def __post_init__(self) -> None:
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ValueError(f"metrics.peak_tflops={self.peak_tflops} must be > 0 or null")


@dataclass
class OptimConfig:
    """`optim`: AdamW (`_partial_`: the module hands it the weight-decay parameter groups)."""

    _target_: str = "torch.optim.AdamW"
    _partial_: bool = True
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    # one kernel per parameter group, and it skips a non-finite step on the device (`nonfinite.NonFiniteGuard`)
    fused: bool = True

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"optim.lr={self.lr} must be a number > 0")
        if not self.weight_decay >= 0:
            raise ValueError(f"optim.weight_decay={self.weight_decay} must be a number >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas={list(self.betas)} must be two numbers in [0, 1)")
        if not self.eps > 0:
            raise ValueError(f"optim.eps={self.eps} must be a number > 0")


@dataclass
class SchedulerConfig:
    """`scheduler`: the lr multiplier per optimizer step (`training.optim.lr_multiplier`): linear warmup, then
    a decay to `min_lr_ratio` that ends at `total_steps`. warmup_cosine: cosine over every step after the
    warmup (`decay_fraction` null); wsd: constant, then `decay_shape` over the last `decay_fraction` of the
    steps; constant: no warmup and `min_lr_ratio=1` (optim.lr throughout)."""

    _target_: str = "gpt4_lightning.training.optim.lr_scheduler"
    _partial_: bool = True
    warmup_steps: int = 0
    total_steps: int = "${trainer.max_steps}"  # type: ignore[assignment]  # an interpolation until resolved
    min_lr_ratio: float = 1.0
    decay_fraction: float | None = None
    decay_shape: str = "cosine"  # one of optim.DECAY_SHAPES

    def __post_init__(self) -> None:
        if isinstance(self.total_steps, int):  # every check of the curve, the fraction against the steps too
            lr_multiplier(self.warmup_steps, self.total_steps, self.min_lr_ratio, self.decay_fraction,
                          self.decay_shape)
        else:  # still the schema's own interpolation
            check_schedule(self.warmup_steps, self.min_lr_ratio, self.decay_shape)


@dataclass
class TrainerConfig:
    """`trainer`: the `lightning.Trainer` arguments this project sets, typed. Any other Trainer argument can be
    added with `+trainer.<name>=<value>` (the node is open to new keys; Lightning checks them)."""

    _target_: str = "lightning.Trainer"
    accelerator: str = "auto"
    devices: Any = 1  # a count, a list of indices, or "auto"
    num_nodes: int = 1
    max_steps: int = 600
    val_check_interval: Any = 100  # int: training batches between validations; float: a fraction of an epoch
    check_val_every_n_epoch: int | None = None
    limit_val_batches: Any = 20  # int: batches; float: a fraction
    log_every_n_steps: int = 10
    gradient_clip_val: float | None = 1.0
    accumulate_grad_batches: int = 1
    default_root_dir: str | None = None
    enable_progress_bar: bool = True
    enable_checkpointing: bool = False  # checkpoints come from checkpoint.AtomicCheckpoint
    precision: str | None = "32-true"
    strategy: Any = "auto"  # "ddp", or a strategy node (conf/trainer/fsdp.yaml)
    logger: Any = None
    callbacks: Any = None

    def __post_init__(self) -> None:
        for key in ("max_steps", "accumulate_grad_batches", "log_every_n_steps", "num_nodes"):
            if getattr(self, key) <= 0:
                raise ValueError(f"trainer.{key}={getattr(self, key)} must be an integer > 0")
