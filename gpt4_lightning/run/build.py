"""From a composed train config to what `Trainer.fit` takes: checked first, then built.

Everything a run could reject is checked before any work (types at compose time; here the ranges, the
trainer against this machine, the checkpoint against the model, the data against the model), so a bad command
fails in a second with one line and changes nothing on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, ListConfig

from gpt4_lightning.config import TrainConfig, to_typed
from gpt4_lightning.data.prepare.pipeline import planned_dir, prepare, prepared_dir
from gpt4_lightning.data.shards import MANIFEST
from gpt4_lightning.data.stream.mixture import Source
from gpt4_lightning.data.stream.opened import OpenedData, open_data
from gpt4_lightning.run.checks import check_trainer, uses_fsdp
from gpt4_lightning.utils.env import is_global_rank_zero

if TYPE_CHECKING:
    import lightning as L

    from gpt4_lightning.data.stream.datamodule import GPT4DataModule
    from gpt4_lightning.training.module import GPT4LitModule


def check_run(cfg: DictConfig, ckpt_path: str | None, here: bool = True) -> TrainConfig:
    """The checks of a run that need no work (no data prepared, no model built, no Lightning): every group's
    ranges, the trainer (against this machine's devices when `here`), the checkpoint it resumes against the
    model, and the memory preflight (against this machine when `here`, else only against
    `preflight.memory_gib`). A sweep runs them on every point before the first job starts (`cli.sweep.CheckedSweeper`),
    `here=False` for jobs another machine runs."""
    run: TrainConfig = to_typed(cfg)  # the range checks of every group
    check_trainer(cfg.trainer, here=here)
    check_logger_installed(cfg.trainer.get("logger"))
    if ckpt_path is not None:
        from gpt4_lightning.checkpoint.load import check_resumable

        check_resumable(ckpt_path, run.model, sharded_ok=uses_fsdp(cfg.trainer))
    from gpt4_lightning.run.preflight import check_memory

    if here or run.preflight.memory_gib is not None:
        check_memory(run, cfg.trainer, run.preflight.mode, run.preflight.memory_gib)
    return run


# what a logger needs that the base install may lack: its Python module, and the extra that installs it
LOGGER_NEEDS = {"TensorBoardLogger": ("tensorboard", "tensorboard"), "WandbLogger": ("wandb", "")}


def check_logger_installed(logger: Any) -> None:
    """`logger=tensorboard` without tensorboard fails here, naming the extra, not in Lightning after the data is
    prepared (a module is looked up, not imported: no cost)."""
    import importlib.util

    for node in logger if isinstance(logger, (list, ListConfig)) else [logger]:
        target = str(node.get("_target_", "")) if isinstance(node, DictConfig) else ""
        module, extra = LOGGER_NEEDS.get(target.rsplit(".", 1)[-1], (None, ""))
        if module is not None and importlib.util.find_spec(module) is None:
            fix = f"pip install -e '.[{extra}]' (or '.[dev]')" if extra else f"pip install {module}"
            raise ValueError(f"{target.rsplit('.', 1)[-1]} needs {module}, which this install lacks; {fix}, or "
                             "pick another logger (logger=csv)")


def build(cfg: DictConfig, ckpt_path: str | None = None) -> tuple[GPT4LitModule, GPT4DataModule, L.Trainer]:
    """The module, data and trainer `cfg` describes (data prepared on the way, if needed), checked against
    the checkpoint `ckpt_path` (resolved by `checkpoint.resume.resolve_ckpt_path`) it will resume from.
    Seeds everything (`cfg.seed`, DataLoader workers too) once the checks pass."""
    run = check_run(cfg, ckpt_path)
    data = open_run_data(run)  # prepared (rank 0) and checked: still without Lightning
    # Lightning (~5 s to import) only now: a command the checks above reject fails in about a second
    import lightning as L
    from hydra.utils import instantiate

    from gpt4_lightning.training.module import GPT4LitModule

    L.seed_everything(cfg.seed, workers=True)
    datamodule = data_module(run, data)
    parallel = run.parallel.for_precision(str(run.trainer.precision))
    module = GPT4LitModule(model=run.model, optimizer=instantiate(cfg.optim), scheduler=instantiate(cfg.scheduler),
                           data_dir=str(datamodule.data_dir), parallel=parallel, init_seed=run.seed,
                           data_sources=[{"name": s.name, "dir": str(s.dir), "weight": s.weight}
                                         for s in datamodule.sources] or None,
                           document_mask=run.data.document_mask)
    fallback = cfg.ckpt_path in ("last", "auto")
    trainer = instantiate(cfg.trainer, **timed_strategy(cfg.trainer, run.parallel.collective_timeout_s),
                          **progress_bar(cfg.trainer), **verified_checkpoint_io(cfg.trainer, fallback))
    if hasattr(trainer.strategy, "fallback"):  # checkpoint.io.VerifiedModelParallelStrategy (trainer=fsdp)
        trainer.strategy.fallback = fallback
    keep_csv_history(trainer)
    return module, datamodule, trainer


def verified_checkpoint_io(trainer: DictConfig, fallback: bool) -> dict[str, Any]:
    """`{"plugins": [..., checkpoint.io.VerifiedCheckpointIO]}` for a trainer that writes `.ckpt` files: checksums
    written with every checkpoint, verified on resume; `fallback` (ckpt_path=last|auto): a checkpoint that fails
    verification gives way to the newest older one that passes. Sharded checkpoints do it in their strategy."""
    from hydra.utils import instantiate

    from gpt4_lightning.checkpoint.io import VerifiedCheckpointIO

    if uses_fsdp(trainer):
        return {}
    return {"plugins": [*(instantiate(trainer.get("plugins")) or []), VerifiedCheckpointIO(fallback=fallback)]}


def progress_bar(trainer: DictConfig) -> dict[str, Any]:
    """`{"callbacks": [..., a progress bar refreshed every log_every_n_steps steps]}` where the trainer shows one,
    else {}. Lightning's default bar reads the logged loss back from the device at every refresh, every step:
    a host-device sync per step for a number the eye cannot follow. TQDM's bar reads them only when it refreshes
    (Rich's reads them every step whatever its refresh rate)."""
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

    if not trainer.get("enable_progress_bar", True):
        return {}
    callbacks = list(instantiate(trainer.get("callbacks")) or [])  # handed on: built once
    if not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(TQDMProgressBar(refresh_rate=int(trainer.get("log_every_n_steps") or 1)))
    return {"callbacks": callbacks}


def keep_csv_history(trainer: L.Trainer) -> None:
    """Every logger (tensorboard, wandb) gets `logs/metrics.csv` in the run directory beside it, as `logger=csv`
    writes: the history the run's report reads (`reporting`), whichever logger the user picked. `logger=none`
    keeps none."""
    from hydra.core.hydra_config import HydraConfig

    from gpt4_lightning.training.loggers import ResumableCSVLogger

    if trainer.loggers and not any(isinstance(lg, ResumableCSVLogger) for lg in trainer.loggers):
        run_dir = HydraConfig.get().runtime.output_dir
        trainer.loggers = [*trainer.loggers, ResumableCSVLogger(save_dir=run_dir, name="logs", version="")]


# a collective waits this long for a hung peer before the run ends (Lightning's default: 30 minutes)
COLLECTIVE_TIMEOUT_S = {"nccl": 600, "gloo": 900}
TIMED_STRATEGIES = ("DDPStrategy", "ModelParallelStrategy", "FSDPStrategy")


def timed_strategy(trainer: DictConfig, timeout_s: int | None) -> dict[str, Any]:
    """`{"strategy": <the trainer's DDP/FSDP strategy with its collective timeout>}`
    (`parallel.collective_timeout_s`, or per backend: 10 min for NCCL, 15 for gloo), or {} for one device."""
    from datetime import timedelta

    from hydra.utils import instantiate

    strategy = trainer.get("strategy")
    target = str(strategy.get("_target_", "")) if isinstance(strategy, DictConfig) else ""
    if strategy != "ddp" and not target.endswith(TIMED_STRATEGIES):
        return {}
    accelerator = str(trainer.get("accelerator", "auto"))
    if timeout_s is None:
        import torch

        gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
        timeout_s = COLLECTIVE_TIMEOUT_S["nccl" if gpu else "gloo"]
    timeout = timedelta(seconds=timeout_s)
    if strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return {"strategy": DDPStrategy(timeout=timeout)}
    return {"strategy": instantiate(strategy, timeout=timeout)}


@dataclass(frozen=True)
class RunData:
    """Where a run's data is and, where this rank checked it, the data opened (`data.stream.opened.OpenedData`)."""

    data_dir: Path | None
    sources: list[Source]
    opened: OpenedData | None
    verify: bool
    check_sizes: bool


def open_run_data(run: TrainConfig) -> RunData:
    """The run's data, prepared and checked. Global rank 0 prepares it (or checks a prepared `data.dir`, sha256
    of every shard only with `data.verify=true`) and opens it (manifest, vocab, windows), before a trainer or
    model exists. The other ranks do no data work here: they open the manifest where rank 0 writes it, now when
    it is already there (the usual case: prepared once, trained many times), else in `setup` after Lightning's
    barrier, which rank 0 reaches only once it has prepared. A mixture of prepared directories has nothing to
    prepare: every rank opens the manifests."""
    rank_zero = is_global_rank_zero()
    seq_len, seed, max_token_id = run.data.seq_len, run.data.seed, run.model.num_tokens
    if run.data.sources:
        sources = [Source(s.name, Path(s.dir).expanduser().absolute(), s.weight) for s in run.data.sources]
        verify = run.data.verify and rank_zero
        return RunData(None, sources, open_data(None, seq_len, seed=seed, sources=sources, verify=verify,
                                                max_token_id=max_token_id, check_sizes=rank_zero),
                       verify, rank_zero)
    given = prepared_dir(run)
    data_dir = given or (prepare(run) if rank_zero else planned_dir(run))
    check = rank_zero and given is not None  # prepare() has just checked (or written) every shard itself
    verify = run.data.verify and check
    opened = None
    if rank_zero or (not run.overwrite and (data_dir / MANIFEST).is_file()):
        opened = open_data(data_dir, seq_len, seed=seed, verify=verify, max_token_id=max_token_id,
                           check_sizes=check)
    return RunData(data_dir, [], opened, verify, check)


def data_module(run: TrainConfig, data: RunData) -> GPT4DataModule:
    """The DataModule over `data` (opened by `open_run_data`, or opened in its `setup`)."""
    from gpt4_lightning.data.stream.datamodule import GPT4DataModule

    datamodule = GPT4DataModule(data.data_dir, seq_len=run.data.seq_len, batch_size=run.data.batch_size,
                                num_workers=run.data.num_workers, seed=run.data.seed, verify=data.verify,
                                max_token_id=run.model.num_tokens, check_sizes=data.check_sizes,
                                sources=data.sources)
    if data.opened is not None:
        datamodule.use(data.opened)
    return datamodule


def callback(trainer: L.Trainer, kind: type) -> Any:
    """The trainer's callback of type `kind`, or None."""
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)
