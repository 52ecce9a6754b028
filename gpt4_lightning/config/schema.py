"""The typed config tree: one dataclass per entry point, made of the groups' dataclasses.

`conf/<entry>.yaml` starts its defaults list with `<entry>_schema` (registered from here), so Hydra types
every group and key against these classes at compose time: `parallel.compile=no` is False, `seed=abc` and
`parallel.compile=maybe` fail naming the key. The YAML files hold values and comments; these hold types and
range checks (`__post_init__`, run by `to_object` before any work).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpt4_lightning.data.config import PrepareCommandConfig, PrepareConfig
from gpt4_lightning.model.config import GPT4Config
from gpt4_lightning.parallel.config import ParallelConfig
from gpt4_lightning.training.config import NONFINITE_MODES, PREFLIGHT_MODES, OptimConfig, SchedulerConfig, TrainerConfig


@dataclass
class TrainConfig(PrepareConfig):
    """`python -m gpt4_lightning.train`: the model, data (prepared on the way), trainer and run keys."""

    model: GPT4Config = field(default_factory=GPT4Config)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    run_name: str | None = None  # names the run directory (outputs/<run_name>); reuse it to resume
    ckpt_path: str | None = None  # null | last | auto | a checkpoint path (see checkpoint.paths)
    seed: int = 1234
    peak_tflops: float | None = None  # one device's peak for MFU; null: Lightning's table of known GPUs
    checkpoint_every_n_steps: int = 100
    keep_last_checkpoints: int | None = None
    nonfinite: str = "skip"  # skip | stop
    nonfinite_max_consecutive: int = 10
    eval_tasks: str | None = None  # lm-eval tasks during training, comma-separated (training.downstream)
    eval_every_n_steps: int = 0  # 0: off
    eval_limit: int | None = 100  # items per task at each in-training eval
    preflight: str = "error"  # error | warn | off: the memory plan against this machine (training.preflight)
    preflight_memory_gib: float | None = None  # memory per rank to plan for; null: what this machine has
    collective_timeout_s: int | None = None  # a hung peer ends the run after this; null: 600 (NCCL), 900 (gloo)
    report_sample_tokens: int = 64  # the end-of-run report's sample from last.ckpt (0: none; reporting.report)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_every_n_steps < 0:
            raise ValueError(f"eval_every_n_steps={self.eval_every_n_steps} must be >= 0 (0: off)")
        if self.eval_every_n_steps and not self.eval_tasks:
            raise ValueError("eval_every_n_steps is set but eval_tasks is not: add eval_tasks=gpt4l_next_line (or "
                             "another lm-eval task with local data)")
        if self.checkpoint_every_n_steps <= 0:
            raise ValueError(f"checkpoint_every_n_steps={self.checkpoint_every_n_steps} must be an integer > 0")
        if self.keep_last_checkpoints is not None and self.keep_last_checkpoints < 1:
            raise ValueError(f"keep_last_checkpoints={self.keep_last_checkpoints} must be >= 1 or null (keep all)")
        if self.preflight not in PREFLIGHT_MODES:
            raise ValueError(f"preflight={self.preflight!r} must be error, warn or off")
        if self.preflight_memory_gib is not None and not self.preflight_memory_gib > 0:
            raise ValueError(f"preflight_memory_gib={self.preflight_memory_gib} must be a number > 0 or null")
        if self.collective_timeout_s is not None and self.collective_timeout_s < 1:
            raise ValueError(f"collective_timeout_s={self.collective_timeout_s} must be >= 1 or null")
        if self.report_sample_tokens < 0:
            raise ValueError(f"report_sample_tokens={self.report_sample_tokens} must be >= 0 (0: no sample)")
        if self.nonfinite not in NONFINITE_MODES:
            raise ValueError(f"nonfinite={self.nonfinite!r} must be 'skip' or 'stop'")
        if self.nonfinite_max_consecutive < 0:
            raise ValueError(f"nonfinite_max_consecutive={self.nonfinite_max_consecutive} must be >= 0")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ValueError(f"peak_tflops={self.peak_tflops} must be > 0 or null")
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
