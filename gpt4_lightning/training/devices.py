"""The devices a command runs on: the one `generate`/`evaluate`/`report` pick (checked against this machine), and
the trainer's loss scaler."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

def loss_scaler(trainer: Any) -> torch.amp.GradScaler | None:
    """The trainer's GradScaler (16-mixed precision), None for fp32 and bf16: where there is one, Lightning unscales
    the gradients before clipping and the scaler owns the optimizer's `found_inf`."""
    return getattr(trainer.precision_plugin, "scaler", None)


def pick_device(device: str) -> torch.device:
    """`device=auto|cpu|cuda|cuda:N|...`, checked: a device this machine does not have is an error."""
    import torch  # lazily: a bad override is reported before torch loads (~2 s)

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        picked = torch.device(str(device))
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device} is not a torch device; use auto, cpu, cuda or cuda:<index>") from e
    if picked.type == "cuda":
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus == 0:
            raise ValueError(f"device={device} but torch sees no CUDA GPU on this machine; use device=cpu (or auto)")
        if picked.index is not None and picked.index >= gpus:
            raise ValueError(f"device={device} but this machine has {gpus} GPU(s) (cuda:0 to cuda:{gpus - 1})")
    return picked


