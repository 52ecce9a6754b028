"""Load a trained GPT4 from a Lightning checkpoint without unpickling arbitrary objects."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from .model import GPT4, GPT4Config

PREFIX = "model."  # GPT4LitModule keeps the GPT4 as `self.model`


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """`torch.load(weights_only=True)`: tensors and plain containers only; anything else is refused.
    For a sharded (FSDP, torch.distributed.checkpoint) directory: its `meta.pt`, without weights."""
    path = Path(path)
    if path.is_dir():
        path = path / "meta.pt"
    if not path.is_file():
        raise ValueError(f"ckpt_path={path}: no such checkpoint file or sharded checkpoint directory")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"ckpt_path={path} holds objects other than tensors and plain data; refusing to "
                         f"unpickle it (weights_only): {str(e).splitlines()[0]}") from e
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"ckpt_path={path} is not a readable checkpoint (truncated or corrupt?): "
                         f"{str(e).splitlines()[0]}") from e


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT4, dict[str, Any]]:
    """The GPT4 saved in a `GPT4LitModule` checkpoint, in eval mode, and the checkpoint's metadata."""
    checkpoint = read_checkpoint(path)
    if "gpt4_config" not in checkpoint:
        raise ValueError(f"ckpt_path={path} was not written by gpt4_lightning.train (no gpt4_config in it)")
    config = GPT4Config.from_kwargs(**checkpoint["gpt4_config"])
    with torch.device("meta"):
        model = GPT4.from_config(config)
    if Path(path).is_dir():
        state = _read_sharded_weights(Path(path), model)
    else:
        state = {k.removeprefix(PREFIX): v for k, v in checkpoint["state_dict"].items() if k.startswith(PREFIX)}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(f"ckpt_path={path} does not fit its own model config: {_shape_mismatch(str(e))}") from e
    model.net.materialize_buffers(torch.device("cpu"))
    meta = {k: v for k, v in checkpoint.items() if k in ("global_step", "epoch", "gpt4_data_dir")}
    return model.to(device).eval(), meta


def _read_sharded_weights(path: Path, model: GPT4) -> dict[str, torch.Tensor]:
    """The full weights of `model` (built on meta: shapes only) from a torch.distributed.checkpoint directory,
    gathered in this one process (any number of shards; DCP reshards on load). Only the model's tensors are
    read, not the optimizer's."""
    import torch.distributed.checkpoint as dcp

    state = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()}
    try:
        dcp.load({"state_dict": {PREFIX + k: v for k, v in state.items()}}, checkpoint_id=str(path), no_dist=True)
    except Exception as e:  # DCP raises CheckpointException listing each rank's error
        raise ValueError(f"ckpt_path={path}: cannot read the sharded weights: {str(e).splitlines()[0]}") from e
    return state


def _shape_mismatch(message: str) -> str:
    found = re.findall(r"size mismatch for ([\w.]+): copying a param with shape (torch.Size\(\[[\d, ]*\]\)) from "
                       r"checkpoint, the shape in current model is (torch.Size\(\[[\d, ]*\]\))", message)
    if found:
        name, saved, current = found[0]
        return f"parameter {name} has shape {saved} in the checkpoint but {current} in the model"
    return message.splitlines()[0]
