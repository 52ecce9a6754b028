"""The typed config tree: one dataclass per entry point, made of the groups' dataclasses.

`conf/<entry>.yaml` starts its defaults list with `<entry>_schema` (registered from here), so Hydra types
every group and key against these classes at compose time: `parallel.compile=no` is False, `seed=abc` and
`parallel.compile=maybe` fail naming the key. The YAML files hold values and comments; these hold types and
range checks (`__post_init__`, run by `to_object` before any work).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpt4_lightning.checkpoint.config import CheckpointConfig
from gpt4_lightning.data.config import PrepareCommandConfig, PrepareConfig
from gpt4_lightning.model.config import GPT4Config
from gpt4_lightning.parallel.config import ParallelConfig
from gpt4_lightning.training.config import (
    EvalConfig,
    MetricsConfig,
    NonFiniteConfig,
    OptimConfig,
    SchedulerConfig,
    TrainerConfig,
)

PREFLIGHT_MODES = ("error", "warn", "off")  # run.preflight.check_memory

# the top-level keys that became keys of a group; the old spelling is refused naming the new one
RENAMED_KEYS = {
    "checkpoint_every_n_steps": "checkpoint.every_n_steps", "keep_last_checkpoints": "checkpoint.keep_last",
    "nonfinite": "nonfinite.mode", "nonfinite_max_consecutive": "nonfinite.max_consecutive",
    "eval_tasks": "eval.tasks", "eval_every_n_steps": "eval.every_n_steps", "eval_limit": "eval.limit",
    "preflight": "preflight.mode", "preflight_memory_gib": "preflight.memory_gib",
    "collective_timeout_s": "parallel.collective_timeout_s", "report_sample_tokens": "report.sample_tokens",
    "peak_tflops": "metrics.peak_tflops",
}


def renamed(key: str, value: object = None) -> str | None:
    """The error for an old top-level spelling (`checkpoint_every_n_steps=10`), naming the new key; None for any
    other key. `nonfinite` and `preflight` are now groups: a string given to them is their old value."""
    new = RENAMED_KEYS.get(key)
    if new is None or (key in ("nonfinite", "preflight") and not isinstance(value, str)):
        return None
    shown = "" if value is None else f"={value}"
    return f"{key} is now {new}: write {new}{shown}"


@dataclass
class PreflightConfig:
    """`preflight`: the memory plan per rank against this machine, before anything is built (`run.preflight`).

    mode: error (refuse a run that cannot fit, naming changes that do) | warn (log it, run anyway) | off.
    memory_gib: memory one rank may use; null: this machine's (MemAvailable, cgroup limit; a GPU's free memory).
    """

    mode: str = "error"
    memory_gib: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in PREFLIGHT_MODES:
            raise ValueError(f"preflight.mode={self.mode!r} must be error, warn or off")
        if self.memory_gib is not None and not self.memory_gib > 0:
            raise ValueError(f"preflight.memory_gib={self.memory_gib} must be a number > 0 or null")


@dataclass
class ReportConfig:
    """`report`: report.md/report.png written into the run directory at the end (`reporting.report`).
    sample_tokens: tokens sampled from last.ckpt for it (0: no sample)."""

    sample_tokens: int = 64

    def __post_init__(self) -> None:
        if self.sample_tokens < 0:
            raise ValueError(f"report.sample_tokens={self.sample_tokens} must be >= 0 (0: no sample)")


@dataclass
class TrainConfig(PrepareConfig):
    """`python -m gpt4_lightning.train`: the model, data (prepared on the way), trainer, the run's groups and keys.
    The defaults live here (conf/train.yaml holds only the defaults list and Hydra's settings)."""

    model: GPT4Config = field(default_factory=GPT4Config)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    nonfinite: NonFiniteConfig = field(default_factory=NonFiniteConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    preflight: PreflightConfig = field(default_factory=PreflightConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    run_name: str | None = None  # names the run directory (outputs/<run_name>); reuse it with ckpt_path=last to resume
    # null: start fresh; last: resume this run dir's last checkpoint (error if none); auto: resume it if there is
    # one, else start fresh (Slurm requeues); or a checkpoint path (checkpoint.paths)
    ckpt_path: str | None = None
    seed: int = 1234

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.data.seq_len > self.model.max_seq_len:
            raise ValueError(f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}; "
                             "lower data.seq_len or raise model.max_seq_len")


@dataclass
class GenerateConfig:
    """`python -m gpt4_lightning.generate`: sample from a checkpoint."""

    ckpt_path: str = "???"
    prompt: str = "def fib(n):"
    max_new_tokens: int = 128
    temperature: float = 0.8  # 0: greedy
    top_k: int | None = 50
    top_p: float | None = None
    num_samples: int = 1
    stop_at_eos: bool = True
    seed: int = 1234
    device: str = "auto"
    tokenizer_path: str | None = None  # null: the tokenizer.json of the data the checkpoint was trained on

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples={self.num_samples} must be an integer >= 1")


@dataclass
class EvaluateConfig:
    """`python -m gpt4_lightning.evaluate`: loss and perplexity of a checkpoint on a split, and lm-eval tasks."""

    ckpt_path: str = "???"
    data_dir: str | None = None  # null: the data the checkpoint was trained on
    source: str | None = None  # a mixture's checkpoint: null scores every source (and the weighted mean); <name>: one
    split: str = "val"
    seq_len: int = 256
    batch_size: int = 8
    max_batches: int | None = None  # null: the whole split
    device: str = "auto"
    tasks: str | None = None  # lm-eval tasks, comma-separated (gpt4l_next_line is built in); null: loss only
    limit: int | None = None  # lm-eval: at most this many items per task
    tasks_dir: str | None = None  # more task YAMLs (local data); null: <cache>/lm_eval_tasks
    results_dir: str | None = None  # lm-eval's results JSON; null: <run>/lm_eval of the checkpoint's run
    tokenizer_path: str | None = None  # null: the tokenizer of the checkpoint's prepared data (or the export's)

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit={self.limit} must be an integer >= 1, or null for every item")
        if self.split not in ("train", "val"):
            raise ValueError(f"split={self.split} is not a split of a prepared data directory; use split=val or "
                             "split=train")
        for key in ("seq_len", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)} must be an integer >= 1")
        if self.max_batches is not None and self.max_batches < 1:
            raise ValueError(f"max_batches={self.max_batches} must be an integer >= 1, or null for the whole split")


@dataclass
class ExportConfig:
    """`python -m gpt4_lightning.export`: a checkpoint -> a transformers directory (code, config, safetensors,
    tokenizer)."""

    ckpt_path: str = "???"
    out: str = "???"
    dtype: str = "fp32"  # fp32 | bf16 | fp16: the exported weights' dtype
    max_shard_mb: int = 5120  # safetensors files above this are split (with an index), as transformers does
    tokenizer_path: str | None = None  # default: the tokenizer.json of the checkpoint's prepared data
    eos_token: str = "<|endoftext|>"  # with tokenizer_path: the token that ends a document

    def __post_init__(self) -> None:
        if self.dtype not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"dtype={self.dtype} is not one of fp32, bf16, fp16")
        if self.max_shard_mb < 1:
            raise ValueError(f"max_shard_mb={self.max_shard_mb} must be >= 1")


SCHEMAS = {"train": TrainConfig, "prepare": PrepareCommandConfig, "generate": GenerateConfig,
           "evaluate": EvaluateConfig, "export": ExportConfig}
# nodes that take new keys with `+key=value` (passed through to what they instantiate)
OPEN_NODES = {"trainer": TrainerConfig}
