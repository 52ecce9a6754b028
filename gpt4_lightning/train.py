"""`python -m gpt4_lightning.train [overrides]`: prepare the data (cached), train, checkpoint.

With no arguments: the stdlib corpus, `gpt4_tiny`, one device. Every run writes its config, logs and
checkpoints into its Hydra run directory; `ckpt_path=last` resumes the run in that directory.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from .cli import launch
from .data.datamodule import GPT4DataModule
from .data.prepare import prepare
from .model import GPT4Config
from .module import GPT4LitModule, perplexity
from .parallelize import ParallelConfig
from .resilience import LAST, GracefulStop, step_of

log = logging.getLogger(__name__)


class NonFiniteLossError(ValueError):
    """Training stopped on a NaN/Inf loss or gradient (`nonfinite=stop`): a bad input or hyperparameter,
    reported as one `error:` line like other bad input."""


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """`last` means this run directory's `checkpoints/last.ckpt`; `auto` the same when it exists, else a
    fresh start (what a requeued Slurm job wants); any other value is a path."""
    if ckpt_path is None:
        return None
    path = run_dir / "checkpoints" / LAST if ckpt_path in ("last", "auto") else Path(ckpt_path)
    if ckpt_path == "auto":
        if not path.exists():
            log.info("ckpt_path=auto: no checkpoint in %s, starting fresh", path.parent)
            return None
        ckpt_path = "last"
    if not path.exists():
        hint = ("pass the run's directory: run_name=<name> or hydra.run.dir=<dir> with ckpt_path=last"
                if ckpt_path == "last" else "check ckpt_path")
        raise ValueError(f"ckpt_path={ckpt_path}: no checkpoint at {path}; {hint}")
    log.info("resuming from %s (step %s)", os.path.realpath(path), step_of(path))
    return str(path)


def check_config(cfg: DictConfig, model_cfg: GPT4Config, ckpt_path: str | None = None) -> None:
    """Values Hydra cannot type-check, named the way the user wrote them; the trainer's devices, precision
    and FSDP mesh against this machine; and a checkpoint to resume from against the model. All before any
    work is done, so a bad command fails in a second with one line and changes nothing on disk."""
    from .checkpoint import check_resumable
    from .hydra_config import check_trainer, uses_fsdp

    integers = {"data.seq_len": cfg.data.seq_len, "data.batch_size": cfg.data.batch_size,
                "trainer.max_steps": cfg.trainer.max_steps, "trainer.accumulate_grad_batches":
                cfg.trainer.accumulate_grad_batches, "checkpoint_every_n_steps": cfg.checkpoint_every_n_steps}
    for key, value in integers.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{key}={value} must be an integer > 0")
    lr, weight_decay = cfg.optim.lr, cfg.optim.get("weight_decay", 0)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr <= 0:
        raise ValueError(f"optim.lr={lr} must be a number > 0")
    if not isinstance(weight_decay, (int, float)) or isinstance(weight_decay, bool) or weight_decay < 0:
        raise ValueError(f"optim.weight_decay={weight_decay} must be a number >= 0")
    if cfg.data.seq_len > model_cfg.max_seq_len:
        raise ValueError(f"data.seq_len={cfg.data.seq_len} exceeds model.max_seq_len={model_cfg.max_seq_len}; "
                         "lower data.seq_len or raise model.max_seq_len")
    check_trainer(cfg.trainer)
    if ckpt_path is not None:  # resolved by resolve_ckpt_path: it exists
        check_resumable(ckpt_path, model_cfg, sharded_ok=uses_fsdp(cfg.trainer))


def build(cfg: DictConfig, ckpt_path: str | None = None) -> tuple[GPT4LitModule, GPT4DataModule, L.Trainer]:
    """The module, data and trainer a config describes (data prepared on the way, if needed), checked
    against the checkpoint `ckpt_path` (resolved) it will resume from."""
    model_cfg = GPT4Config.from_kwargs(**OmegaConf.to_container(cfg.model, resolve=True))
    check_config(cfg, model_cfg, ckpt_path)
    data_dir = prepare(cfg)
    datamodule = GPT4DataModule(data_dir, seq_len=cfg.data.seq_len, batch_size=cfg.data.batch_size,
                                num_workers=cfg.data.num_workers, seed=cfg.data.seed, verify=cfg.data.verify,
                                max_token_id=model_cfg.num_tokens)
    datamodule.setup()  # the manifest, vocab and window checks now, before a trainer or model exists
    scheduler = instantiate(cfg.scheduler) if cfg.scheduler is not None else None
    parallel = ParallelConfig(**OmegaConf.to_container(cfg.parallel, resolve=True)).for_precision(
        str(cfg.trainer.precision))
    module = GPT4LitModule(model=model_cfg, optimizer=instantiate(cfg.optim), scheduler=scheduler,
                           data_dir=str(data_dir), parallel=parallel, init_seed=cfg.seed, nonfinite=cfg.nonfinite,
                           nonfinite_max_consecutive=cfg.nonfinite_max_consecutive)
    trainer = instantiate(cfg.trainer)
    return module, datamodule, trainer


def command(entry: str, args: list[str]) -> str:
    return " ".join(["python -m", f"gpt4_lightning.{entry}", *(shlex.quote(a) for a in args)])


# set in the launching process by Lightning's subprocess launcher (DDP/FSDP children)
LIGHTNING_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
_launch_env: dict[str, str | None] | None = None


def pin_sweep_job_for_child_ranks() -> None:
    """Hydra multirun + DDP/FSDP on one node: Lightning starts ranks > 0 by re-running `sys.argv` with
    `hydra.run.dir=<hydra.run.dir>`. In a sweep, `sys.argv` holds `-m` and every sweep value, and
    `hydra.run.dir` is not this job's directory: each child would re-launch the whole sweep into a new
    run directory. Make them run this one job (its own overrides), in this job's sweep subdirectory.
    Lightning also leaves LOCAL_RANK & co. in the launching process's environment, which would make the
    next job of the sweep believe its ranks were started externally and wait for them forever."""
    global _launch_env
    if _launch_env is None:  # the first job in this process: the environment as the user launched it
        _launch_env = {k: os.environ.get(k) for k in LIGHTNING_LAUNCH_ENV}
    else:  # later jobs of a sweep in the same process: drop what Lightning set for the previous job's ranks
        for key, value in _launch_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN or "LOCAL_RANK" in os.environ:  # a child, or torchrun/Slurm ranks
        return
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


def train(cfg: DictConfig) -> dict[str, Any]:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    pin_sweep_job_for_child_ranks()
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, run_dir)  # before any work: a wrong path fails at once
    L.seed_everything(cfg.seed, workers=True)
    module, datamodule, trainer = build(cfg, ckpt_path)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # the next job of a sweep in this process starts its own

    overrides = [o for o in HydraConfig.get().overrides.task
                 if not o.startswith(("ckpt_path=", "run_name=", "hydra.run.dir="))]
    resume = command("train", [*overrides, f"hydra.run.dir={run_dir}", "ckpt_path=last"])
    stopper = next((c for c in trainer.callbacks if isinstance(c, GracefulStop)), None)
    if module.nonfinite_stop_step is not None:
        raise NonFiniteLossError(
            f"non-finite loss or gradient norm at step {module.nonfinite_stop_step} (nonfinite={cfg.nonfinite}, "
            f"{module.nonfinite_steps} bad steps in all); the weights from before it are in "
            f"{stopper.checkpoint if stopper else run_dir / 'checkpoints'}; lower optim.lr or check the data, "
            f"then resume: {resume}")
    val_loss = trainer.callback_metrics.get("val/loss")
    result = {"run_dir": str(run_dir), "global_step": trainer.global_step,
              "val_loss": float(val_loss) if val_loss is not None else None,
              "stop_signal": stopper.stop_signal if stopper else None}
    if trainer.is_global_zero and stopper is not None and stopper.stop_signal:
        requeued = stopper.requeue()
        print(f"stopped by {stopper.stop_signal} at step {trainer.global_step}; checkpoint {stopper.checkpoint}",
              flush=True)
        print("the Slurm job is requeued and resumes from it" if requeued else f"resume: {resume}", flush=True)
        return result
    if trainer.is_global_zero:
        last = run_dir / "checkpoints" / LAST
        lines = [f"run directory: {run_dir}", f"steps: {trainer.global_step}"]
        if val_loss is not None:
            lines.append(f"final val loss {float(val_loss):.4f}, perplexity {perplexity(float(val_loss)):.2f}")
        lines += [
            "resume:   " + resume,
            "generate: " + command("generate", [f"ckpt_path={last}", "prompt=def fib(n):"]),  # generate quotes it
            "evaluate: " + command("evaluate", [f"ckpt_path={last}"]),
        ]
        print("\n".join(lines), flush=True)
    return result


if __name__ == "__main__":
    launch("train", train)
