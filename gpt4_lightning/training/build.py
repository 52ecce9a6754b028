"""From a composed train config to what `Trainer.fit` takes: checked first, then built.

Everything a run could reject is checked before any work (types at compose time; here the ranges, the
trainer against this machine, the checkpoint against the model, the data against the model), so a bad command
fails in a second with one line and changes nothing on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from ..config import TrainConfig, to_typed
from ..data.mixture import Source
from ..data.prepare import planned_dir, prepare, prepared_dir
from ..data.shards import MANIFEST
from .devices import check_trainer, is_global_rank_zero, uses_fsdp

if TYPE_CHECKING:
    import lightning as L

    from ..data.datamodule import GPT4DataModule
    from .module import GPT4LitModule


def build(cfg: DictConfig, ckpt_path: str | None = None) -> tuple[GPT4LitModule, GPT4DataModule, L.Trainer]:
    """The module, data and trainer `cfg` describes (data prepared on the way, if needed), checked against
    the checkpoint `ckpt_path` (resolved by `checkpoint.paths.resolve_ckpt_path`) it will resume from.
    Seeds everything (`cfg.seed`, DataLoader workers too) once the checks pass."""
    run: TrainConfig = to_typed(cfg)  # the range checks of every group
    check_trainer(cfg.trainer)
    if ckpt_path is not None:
        from ..checkpoint.load import check_resumable

        check_resumable(ckpt_path, run.model, sharded_ok=uses_fsdp(cfg.trainer))
    # Lightning (~4 s to import) only now: a command the checks above reject fails in about a second
    import lightning as L
    from hydra.utils import instantiate

    from .module import GPT4LitModule

    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_data(run)
    parallel = run.parallel.for_precision(str(run.trainer.precision))
    module = GPT4LitModule(model=run.model, optimizer=instantiate(cfg.optim), scheduler=instantiate(cfg.scheduler),
                           data_dir=str(datamodule.data_dir), parallel=parallel, init_seed=run.seed,
                           data_sources=[{"name": s.name, "dir": str(s.dir), "weight": s.weight}
                                         for s in datamodule.sources] or None)
    trainer = instantiate(cfg.trainer)
    return module, datamodule, trainer


def build_data(run: TrainConfig) -> GPT4DataModule:
    """The DataModule over the run's prepared data. Global rank 0 prepares it (or checks a prepared `data.dir`,
    sha256 of every shard only with `data.verify=true`) and runs the data checks now, before a trainer or model
    exists. The other ranks do no data work here: they read the manifest where rank 0 writes it, early when it
    is already there (the usual case: prepared once, trained many times), else in `setup` after Lightning's
    barrier, which rank 0 reaches only once it has prepared."""
    from ..data.datamodule import GPT4DataModule

    rank_zero = is_global_rank_zero()
    if run.data.sources:  # a mixture of prepared directories: nothing to prepare; every rank reads the manifests
        sources = [Source(s.name, Path(s.dir).expanduser().absolute(), s.weight) for s in run.data.sources]
        datamodule = GPT4DataModule(None, seq_len=run.data.seq_len, batch_size=run.data.batch_size,
                                    num_workers=run.data.num_workers, seed=run.data.seed,
                                    verify=run.data.verify and rank_zero, max_token_id=run.model.num_tokens,
                                    check_sizes=rank_zero, sources=sources)
        datamodule.setup()
        return datamodule
    given = prepared_dir(run)
    data_dir = given or (prepare(run) if rank_zero else planned_dir(run))
    check = rank_zero and given is not None  # prepare() has just checked (or written) every shard itself
    datamodule = GPT4DataModule(data_dir, seq_len=run.data.seq_len, batch_size=run.data.batch_size,
                                num_workers=run.data.num_workers, seed=run.data.seed,
                                verify=run.data.verify and check, max_token_id=run.model.num_tokens,
                                check_sizes=check)
    if rank_zero or (not run.overwrite and (data_dir / MANIFEST).is_file()):
        datamodule.setup()  # the manifest, vocab and window checks, in a second
    return datamodule


def callback(trainer: L.Trainer, kind: type) -> Any:
    """The trainer's callback of type `kind`, or None."""
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)
