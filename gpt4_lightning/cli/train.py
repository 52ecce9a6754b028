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

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict, read_write

from gpt4_lightning.checkpoint.paths import LAST, checkpoint_dir
from gpt4_lightning.checkpoint.resume import resolve_ckpt_path
from gpt4_lightning.cli.launch import launch
from gpt4_lightning.run.build import build, callback

log = logging.getLogger(__name__)


class NonFiniteLossError(ValueError):
    """Training stopped on a NaN/Inf loss or gradient (`nonfinite.mode=stop`): a bad input or hyperparameter,
    reported as one `error:` line like other bad input."""


class RunInterruptedError(ValueError):
    """The run stopped on a fault outside it (a rank lost, the disk full): one `error:` line saying what was
    lost and how to resume (the traceback with HYDRA_FULL_ERROR=1)."""


# what gloo and NCCL say on the surviving ranks when a peer dies or hangs
PEER_LOSS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted",
             "Watchdog caught collective operation timeout", "Socket Timeout", "Timed out", "timed out")


def is_peer_loss(e: BaseException) -> bool:
    import torch.distributed as dist

    return isinstance(e, getattr(dist, "DistBackendError", ())) or any(p in str(e) for p in PEER_LOSS)


def lost_peer(trainer: Any, e: BaseException) -> str:
    """`rank 1 of 2 died (killed by SIGKILL)` where this process started the rank (Lightning's launcher),
    else what the backend said."""
    import signal

    procs = getattr(getattr(trainer.strategy, "launcher", None), "procs", None) or []
    per_node = len(procs) + 1
    for local_rank, proc in enumerate(procs, start=1):
        code = proc.poll()
        if code not in (None, 0):
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            rank = trainer.node_rank * per_node + local_rank
            return f"rank {rank} of {trainer.world_size} died ({how}) during step {trainer.global_step + 1}"
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return (f"a peer rank was lost during step {trainer.global_step + 1} ({first[:200]}); its own log says "
            "why (on Slurm: the job's other tasks' output)")


def last_checkpoint(run_dir: Path) -> str:
    last = checkpoint_dir(run_dir) / LAST
    if not last.exists():
        return "no checkpoint was written before it"
    return f"the last complete checkpoint is {last.resolve()}"


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
    module, datamodule, trainer = build(cfg, ckpt_path)  # imports Lightning only once its checks pass
    import torch  # these load Lightning: after the checks, so a rejected command fails in about a second

    from gpt4_lightning.checkpoint.atomic import CheckpointSpaceError
    from gpt4_lightning.training.module import perplexity
    from gpt4_lightning.training.nonfinite import NonFiniteGuard
    from gpt4_lightning.training.stop import GracefulStop

    overrides = [o for o in HydraConfig.get().overrides.task
                 if not o.startswith(("ckpt_path=", "run_name=", "hydra.run.dir="))]
    resume = command("train", [*overrides, f"hydra.run.dir={run_dir}", "ckpt_path=last"])
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except CheckpointSpaceError as e:
        raise RunInterruptedError(f"{e}; then resume: {resume}") from e
    except RuntimeError as e:  # torch.distributed's DistBackendError is one
        if trainer.world_size < 2 or not is_peer_loss(e):
            raise
        raise RunInterruptedError(f"{lost_peer(trainer, e)}; {last_checkpoint(run_dir)}; resume: {resume}") from e
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # the next job of a sweep in this process starts its own
    stopper, guard = callback(trainer, GracefulStop), callback(trainer, NonFiniteGuard)
    if guard is not None and guard.reason is not None:
        raise NonFiniteLossError(
            f"{guard.reason}; the weights from before it are in "
            f"{stopper.checkpoint if stopper else checkpoint_dir(run_dir)}; lower optim.lr or check the data, "
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
        last = checkpoint_dir(run_dir) / LAST
        lines = [f"run directory: {run_dir}", f"steps: {trainer.global_step}"]
        if val_loss is not None:
            lines.append(f"final val loss {float(val_loss):.4f}, perplexity {perplexity(float(val_loss)):.2f}")
        lines += [
            "resume:   " + resume,
            "generate: " + command("generate", [f"ckpt_path={last}", "prompt=def fib(n):"]),  # generate quotes it
            "evaluate: " + command("evaluate", [f"ckpt_path={last}"]),
        ]
        report = write_run_report(run_dir, cfg.report.sample_tokens)
        if report is not None:
            lines.append(f"report:   {report} (curves: {report.with_name('report.png')})")
        print("\n".join(lines), flush=True)
    return result


def write_run_report(run_dir: Path, sample_tokens: int) -> Path | None:
    """The run's report.md/report.png (rank 0, after training); a failure to write it is logged, never turns a
    finished run into a failed one."""
    from gpt4_lightning.reporting.report import write_report

    try:
        return write_report(run_dir, sample_tokens)
    except Exception as e:  # the run has finished; the report is an extra
        log.warning("the run's report was not written (%s: %s); python -m gpt4_lightning.report %s retries",
                    type(e).__name__, e, run_dir)
        return None


def main() -> None:
    launch("train", train, lock_run_dir=True)


if __name__ == "__main__":
    main()
