"""A checkpoint written in the background while training goes on (`checkpoint.async_save=true`).

The training state is staged into host memory first (a copy of every tensor, pinned on CUDA so the copy runs at
PCIe speed), then one thread writes the files, verifies nothing is missing, and publishes the checkpoint
(`atomic.AtomicCheckpoint`). Lightning's `AsyncCheckpointIO` clones the tensors on their own device (a second copy
of the state in GPU memory) and reports no completion, so nothing could be published after the write.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import torch


def stage_to_host(state: Any) -> Any:
    """A copy of `state` (nested dicts, lists, tuples) with every tensor copied to host memory: pinned where CUDA
    is in use, so the next steps may change the originals. Shapes and dtypes as they were."""
    if isinstance(state, torch.Tensor):
        if state.device.type == "cpu":
            return state.detach().clone()
        staged = torch.empty(state.shape, dtype=state.dtype, device="cpu", pin_memory=torch.cuda.is_available())
        return staged.copy_(state.detach(), non_blocking=True)
    if isinstance(state, dict):
        return {k: stage_to_host(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(stage_to_host(v) for v in state)
    return state


class BackgroundSave:
    """One save in flight: `work` runs in a thread; `wait` joins it, re-raises what it raised, and returns the
    seconds the caller waited."""

    def __init__(self, work: Callable[[], None], name: str) -> None:
        self.error: BaseException | None = None

        def run() -> None:
            try:
                work()
            except BaseException as e:  # raised in the training thread at the next wait
                self.error = e

        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the non-blocking copies of stage_to_host are complete before the write
        self.thread = threading.Thread(target=run, name=name, daemon=True)
        self.thread.start()

    def done(self) -> bool:
        return not self.thread.is_alive()

    def wait(self) -> float:
        start = time.perf_counter()
        self.thread.join()
        if self.error is not None:
            raise self.error
        return time.perf_counter() - start
