"""Which training batches end with an optimizer step (Lightning has no after-optimizer-step callback hook)."""

from __future__ import annotations

import lightning as L


class OptimizerSteps:
    """`stepped(trainer)` in `on_train_batch_end`: True when this batch's optimizer step happened (the
    trainer's `global_step` moved since the last call), False while gradients accumulate. `start(trainer)`
    in `on_train_start`, so a resumed run's first micro-batch is not taken for a step."""

    def __init__(self) -> None:
        self._last: int | None = None

    def start(self, trainer: L.Trainer) -> None:
        self._last = trainer.global_step

    def stepped(self, trainer: L.Trainer) -> bool:
        step, last = trainer.global_step, self._last
        self._last = step
        return step != last
