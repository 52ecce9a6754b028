"""What `ckpt_path=last|auto|<path>` resumes from: the checkpoint named, if it is complete and verifies, else
(for `last`/`auto`) the newest older one of the run that does, with one warning line saying what was lost.

Twice: `resolve_ckpt_path` before anything is built (a stat per file: truncated files, a missing `.metadata`),
and `choose` once the ranks are up (every byte hashed, each rank its share, the ranks agreeing).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpt4_lightning.checkpoint.integrity import Verdict, verify
from gpt4_lightning.checkpoint.paths import LAST, checkpoint_dir, older_checkpoints, step_of

log = logging.getLogger(__name__)


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """`last` means this run directory's `checkpoints/last.ckpt`; `auto` the same when it exists, else a
    fresh start (what a requeued Slurm job wants); any other value is a path."""
    if ckpt_path is None:
        return None
    path = checkpoint_dir(run_dir) / LAST if ckpt_path in ("last", "auto") else Path(ckpt_path)
    if ckpt_path == "auto":
        if not path.exists():
            log.info("ckpt_path=auto: no checkpoint in %s, starting fresh", path.parent)
            return None
        ckpt_path = "last"
    if not path.exists():
        hint = ("pass the run's directory: run_name=<name> or hydra.run.dir=<dir> with ckpt_path=last"
                if ckpt_path == "last" else "check ckpt_path")
        raise ValueError(f"ckpt_path={ckpt_path}: no checkpoint at {path}; {hint}")
    path = complete_checkpoint(path, ckpt_path, fallback=ckpt_path == "last")
    log.info("resuming from %s (step %s)", os.path.realpath(path), step_of(path))
    return str(path)


Found = tuple[Path, Verdict] | None


def first_sound(requested: Path, fallback: bool,
                check: Callable[[Path], Verdict]) -> tuple[Found, list[tuple[Path, str]]]:
    """Walk `requested`, then (`fallback`) the older checkpoints beside it, newest first, until one passes `check`:
    that one and its verdict (None if none does), and the (checkpoint, problem) of each that failed before it."""
    failures: list[tuple[Path, str]] = []
    for candidate in [requested, *(older_checkpoints(requested) if fallback else [])]:
        verdict = check(candidate)
        if verdict.ok:
            return (candidate, verdict), failures
        failures.append((candidate, str(verdict.problem)))
    return None, failures


def complete_checkpoint(path: Path, ckpt_path: str, fallback: bool) -> Path:
    """`path`, if every file its manifest lists is there and of its size (a stat per file, no reading); else, with
    `fallback`, the newest older checkpoint of the run that is, with one warning line. The checksums themselves are
    verified once the ranks are up (`choose`, every rank hashing its share)."""
    requested = Path(os.path.realpath(path))
    found, failures = first_sound(requested, fallback, lambda c: verify(c, contents=False))
    if not failures:
        return path
    problem = failures[0][1]
    if found is not None:
        log.warning(describe_fallback(requested, problem, found[0]))
        return found[0]
    if not fallback:
        raise ValueError(f"ckpt_path={ckpt_path}: checkpoint {requested} is incomplete ({problem}); use "
                         "another checkpoint (e.g. an earlier stepNNNNNN.ckpt of the run, or ckpt_path=last)")
    raise ValueError(f"ckpt_path={ckpt_path}: no complete checkpoint in {requested.parent} (the newest, "
                     f"{requested.name}: {problem}); start fresh without ckpt_path")


def describe_fallback(bad: Path, problem: str, chosen: Path) -> str:
    lost = (step_of(bad) or 0) - (step_of(chosen) or 0)
    return (f"checkpoint {bad} failed verification ({problem}): resuming from {chosen.name} instead, "
            f"{lost} step{'s' if lost != 1 else ''} lost")


def _gathered_problem(verdict: Verdict) -> Verdict:
    """Every rank's verdict on its share, combined: the first problem any rank found (all ranks agree)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return verdict
    verdicts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(verdicts, (verdict.problem, verdict.manifest))
    problem = next((p for p, _ in verdicts if p is not None), None)
    return Verdict(problem, manifest=all(m for _, m in verdicts))


def choose(checkpoint: str | os.PathLike, fallback: bool) -> Path:
    """The checkpoint to load: `checkpoint` if it verifies, else (`fallback`: it came from `ckpt_path=last|auto`)
    the newest older one that does, with one warning line; every rank of a run calls it and gets the same answer.
    Raises ValueError for a failing explicit path, or when no checkpoint of the run verifies."""
    import torch.distributed as dist

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    requested = Path(os.path.realpath(checkpoint))
    found, failures = first_sound(requested, fallback, lambda c: _gathered_problem(verify(c, rank=rank, world=world)))
    if found is not None:
        chosen, verdict = found
        if failures and rank == 0:
            log.warning(describe_fallback(*failures[0], chosen))
        if not verdict.manifest and rank == 0:
            log.warning("checkpoint %s has no checksums (written before gpt4_lightning verified checkpoints): "
                        "loaded unverified", chosen)
        return chosen
    bad, problem = failures[0]
    if not fallback:
        raise ValueError(f"ckpt_path={checkpoint}: checkpoint {bad} failed verification ({problem}); use another "
                         "checkpoint (e.g. an earlier stepNNNNNN.ckpt of the run, or ckpt_path=last)")
    raise ValueError(f"ckpt_path={checkpoint}: no checkpoint of the run verifies (the newest, {bad.name}: {problem}; "
                     f"{len(failures) - 1} older ones failed too); start fresh without ckpt_path")
