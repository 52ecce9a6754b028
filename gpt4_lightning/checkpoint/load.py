"""Load a trained GPT4 from a Lightning checkpoint without unpickling arbitrary objects, and check a
checkpoint against a model config before anything is loaded (train's `ckpt_path`, generate/evaluate/export).

Every failure is a `ValueError` naming `ckpt_path`, what is wrong and what to do."""

from __future__ import annotations

import dataclasses
import logging
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from gpt4_lightning.checkpoint.format import CONFIG_KEY, DCP_METADATA, MODEL_PREFIX, SHARDED_META, describe
from gpt4_lightning.checkpoint.integrity import verify
from gpt4_lightning.model import GPT4, GPT4Config

log = logging.getLogger(__name__)

PREFIX = MODEL_PREFIX

Shapes = dict[str, tuple[int, ...]]


def _first_sentence(message: str) -> str:
    line = next((s.strip() for s in message.splitlines() if s.strip()), "")
    return re.split(r"(?<=[a-z\)])\. ", line, maxsplit=1)[0]


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """`torch.load(weights_only=True)`: tensors and plain containers only; anything else is refused.
    For a sharded (FSDP, torch.distributed.checkpoint) directory: its `meta.pt`, without weights.
    `mmap`: map the tensors instead of reading them (shapes for free)."""
    path = Path(path)
    if path.is_dir():
        if not (path / SHARDED_META).is_file():
            raise ValueError(f"ckpt_path={path} is a directory but not a sharded checkpoint (no {SHARDED_META} in "
                             "it); pass a .ckpt file or a checkpoint directory written by trainer=fsdp")
        path = path / SHARDED_META
    elif not path.exists():
        raise ValueError(f"ckpt_path={path}: no such checkpoint file or sharded checkpoint directory; check the "
                         "path (a run's checkpoints are in outputs/<run>/checkpoints/)")
    elif not path.is_file():
        raise ValueError(f"ckpt_path={path} is not a regular file; pass a .ckpt file or a sharded checkpoint directory")
    if path.stat().st_size == 0:
        raise ValueError(f"ckpt_path={path} is empty (0 bytes): an interrupted copy or save; use another checkpoint "
                         "(e.g. an earlier stepNNNNNN.ckpt of the run)")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # an old (non-zip) file cannot be mapped
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise ValueError(f"ckpt_path={path} holds a pickled {found.group(1)} object, not only tensors and plain "
                             "data; refusing to unpickle it (torch.load weights_only=True): use a checkpoint written "
                             "by gpt4_lightning.train, or one you re-saved without that object") from e
        raise ValueError(f"ckpt_path={path} is not a readable checkpoint (not a torch.save file, or corrupt); "
                         "use another checkpoint") from e
    except Exception as e:  # zip/stream errors (RuntimeError), EOFError, OSError, IndexError on odd files
        raise ValueError(f"ckpt_path={path} is not a readable checkpoint (truncated or corrupt: "
                         f"{_first_sentence(str(e)) or type(e).__name__}); use another checkpoint (e.g. an earlier "
                         "stepNNNNNN.ckpt of the run)") from e


def checkpoint_config(path: str | Path, checkpoint: dict[str, Any]) -> GPT4Config:
    """The model config a `GPT4LitModule` checkpoint records."""
    if not isinstance(checkpoint, dict) or CONFIG_KEY not in checkpoint:
        raise ValueError(f"ckpt_path={path} was not written by gpt4_lightning.train (no gpt4_config in it); "
                         "pass a checkpoint from a gpt4_lightning run")
    try:
        return GPT4Config.from_kwargs(**checkpoint[CONFIG_KEY])
    except (TypeError, ValueError) as e:
        raise ValueError(f"ckpt_path={path} records an invalid model config ({e}); the file is damaged or not "
                         "from this version of gpt4_lightning") from e


def checkpoint_shapes(path: str | Path, checkpoint: dict[str, Any]) -> Shapes:
    """The shape of every model tensor in a checkpoint (names without the `model.` prefix), read without
    loading the weights. For a sharded directory, from its DCP metadata, after checking that every shard
    file it lists is there and long enough."""
    path = Path(path)
    if not path.is_dir():
        state = checkpoint.get("state_dict")
        if not isinstance(state, dict):
            raise ValueError(f"ckpt_path={path} has no state_dict; pass a checkpoint from a gpt4_lightning run")
        return {k.removeprefix(PREFIX): tuple(v.shape) for k, v in state.items()
                if k.startswith(PREFIX) and isinstance(v, torch.Tensor)}
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    if not (path / DCP_METADATA).is_file():
        raise ValueError(f"ckpt_path={path} is a sharded checkpoint without its {DCP_METADATA} file (an incomplete "
                         "copy?); copy the whole checkpoint directory")
    try:
        metadata = FileSystemReader(str(path)).read_metadata()
    except Exception as e:
        raise ValueError(f"ckpt_path={path}: {path / DCP_METADATA} is not readable (truncated or corrupt: "
                         f"{_first_sentence(str(e)) or type(e).__name__}); copy the whole checkpoint directory "
                         "again") from e
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        shard = path / name
        if not shard.is_file():
            raise ValueError(f"ckpt_path={path} is missing its shard file {name} (listed in its {DCP_METADATA}, "
                             f"which names {len(needed)} in all): copy the whole checkpoint directory")
        if shard.stat().st_size < size:
            raise ValueError(f"ckpt_path={path}: shard {name} has {shard.stat().st_size} bytes but {DCP_METADATA} "
                             f"needs {size} (truncated); copy the whole checkpoint directory again")
    prefix = "state_dict." + PREFIX
    return {fqn.removeprefix(prefix): tuple(m.size) for fqn, m in metadata.state_dict_metadata.items()
            if fqn.startswith(prefix) and isinstance(m, TensorStorageMetadata)}


def model_shapes(model: GPT4) -> Shapes:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def shape_mismatch(saved: Shapes, expected: Shapes) -> str | None:
    """The first difference between a checkpoint's tensors and a model's, in words; None if they fit."""
    for name, shape in expected.items():
        if name not in saved:
            return f"parameter {name} {list(shape)} of the model is not in the checkpoint"
        if saved[name] != shape:
            return f"parameter {name} has shape {list(saved[name])} in the checkpoint but {list(shape)} in the model"
    extra = sorted(set(saved) - set(expected))
    if extra:
        return f"parameter {extra[0]} {list(saved[extra[0]])} of the checkpoint is not in the model"
    return None


def config_differences(saved: GPT4Config, config: GPT4Config) -> list[str]:
    return [f"model.{f.name}={getattr(saved, f.name)!r} in the checkpoint, {getattr(config, f.name)!r} here"
            for f in dataclasses.fields(GPT4Config) if getattr(saved, f.name) != getattr(config, f.name)]


def check_resumable(path: str | Path, config: GPT4Config, sharded_ok: bool) -> None:
    """Before training resumes from `path`: is it readable, complete, and of the same model shape as
    `config`? (Lightning would otherwise fail deep inside `fit` with a page of size mismatches.)"""
    path = Path(path)
    checkpoint = read_checkpoint(path, mmap=True)
    if path.is_dir() and not sharded_ok:
        raise ValueError(f"ckpt_path={path} is a sharded (FSDP) checkpoint directory; resume it with trainer=fsdp "
                         "(on any number of devices)")
    saved = checkpoint_config(path, checkpoint)
    with torch.device("meta"):
        model = GPT4.from_config(config)
    mismatch = shape_mismatch(checkpoint_shapes(path, checkpoint), model_shapes(model))
    if mismatch:
        differences = "; ".join(config_differences(saved, config)) or "no model.* setting differs"
        raise ValueError(f"ckpt_path={path} is from a different model: {mismatch} ({differences}); resume with the "
                         "checkpoint's model settings, or start fresh without ckpt_path")


def verified(path: str | Path) -> None:
    """Every byte of the checkpoint at `path` against its checksums (`integrity`), before generate, evaluate or
    export read it; one warning line for a checkpoint written before checksums."""
    verdict = verify(path)
    if not verdict.ok:
        raise ValueError(f"ckpt_path={path}: the checkpoint failed verification ({verdict.problem}); use another "
                         "checkpoint (e.g. an earlier stepNNNNNN.ckpt of the run)")
    if not verdict.manifest:
        log.warning("checkpoint %s has no checksums (written before gpt4_lightning verified checkpoints): read "
                    "unverified", path)


def _checked(path: str | Path, mmap: bool, check_sums: bool = True) -> tuple[dict[str, Any], GPT4]:
    """The checkpoint (`mmap`: tensors mapped, not read), verified (`check_sums`), and its GPT4 built on meta, the
    shapes checked."""
    checkpoint = read_checkpoint(path, mmap=mmap)  # the clearer message first for what is no checkpoint at all
    if check_sums:
        verified(path)
    with torch.device("meta"):
        model = GPT4.from_config(checkpoint_config(path, checkpoint))
    mismatch = shape_mismatch(checkpoint_shapes(path, checkpoint), model_shapes(model))
    if mismatch:
        raise ValueError(f"ckpt_path={path} does not fit its own model config: {mismatch}; the file is damaged or "
                         "was edited: use another checkpoint")
    return checkpoint, model


def load_model(path: str | Path, device: str | torch.device = "cpu",
               check_sums: bool = True) -> tuple[GPT4, dict[str, Any]]:
    """The GPT4 saved in a `GPT4LitModule` checkpoint, in eval mode, and `format.describe` of the checkpoint;
    every byte verified against its checksums first unless `check_sums=False` (the run report's sample)."""
    checkpoint, model = _checked(path, mmap=False, check_sums=check_sums)
    if Path(path).is_dir():
        state = _read_sharded_weights(Path(path), model)
    else:
        state = {k.removeprefix(PREFIX): v for k, v in checkpoint["state_dict"].items() if k.startswith(PREFIX)}
    model.load_state_dict(state, strict=True, assign=True)  # names and shapes checked above
    model.materialize_buffers(torch.device("cpu"))
    return model.to(device).eval(), describe(checkpoint)


def iter_weights(path: str | Path) -> tuple[GPT4Config, dict[str, Any], Iterator[tuple[str, torch.Tensor]]]:
    """The model config, `format.describe` of the checkpoint, and its weights one tensor at a time (the model's
    own names), without ever holding the whole model: a `.ckpt` is memory-mapped, a sharded directory is read
    one tensor per `dcp.load` (DCP reshards on load, any number of ranks)."""
    checkpoint, model = _checked(path, mmap=True)
    expected = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        if not Path(path).is_dir():
            state = checkpoint["state_dict"]
            yield from ((name, state[PREFIX + name]) for name in expected)
            return
        for name, (shape, dtype) in expected.items():
            yield name, _read_sharded_weights(Path(path), {name: torch.empty(shape, dtype=dtype)})[name]

    return model.config, describe(checkpoint), tensors()


def _read_sharded_weights(path: Path, model: GPT4 | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The full weights of `model` (built on meta: shapes only; or a dict of empty tensors to fill) from a
    torch.distributed.checkpoint directory, gathered in this one process (any number of shards; DCP reshards
    on load). Only the model's tensors are read, not the optimizer's."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    state = (model if isinstance(model, dict) else
             {k: torch.empty(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()})
    try:
        dcp.load({"state_dict": {PREFIX + k: v for k, v in state.items()}}, checkpoint_id=str(path), no_dist=True)
    except (Exception, CheckpointException) as e:  # CheckpointException (a BaseException) lists each rank's error
        failures = getattr(e, "failures", None)
        cause = next(iter(failures.values()), e) if isinstance(failures, dict) and failures else e
        raise ValueError(f"ckpt_path={path}: cannot read the sharded weights ({type(cause).__name__}: "
                         f"{_first_sentence(str(cause))}); copy the whole checkpoint directory again") from e
    return state
