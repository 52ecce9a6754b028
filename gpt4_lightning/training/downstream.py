"""`DownstreamEval`: lm-eval tasks on the model being trained, every `every_n_steps` optimizer steps.

Off unless `eval.tasks` and `eval.every_n_steps` are set (`conf/callbacks/default.yaml`). Global rank 0 scores
an unsharded copy: under FSDP the full weights are gathered to its CPU (`get_model_state_dict(full_state_dict,
cpu_offload)`, a collective every rank joins), elsewhere it scores the training model itself in eval mode.
The other ranks wait at a barrier; rank 0 logs `eval/<task>/<metric>` and `eval/seconds` at that step. Keep
`eval.limit` such that the eval takes well under the process group's timeout (the others wait in a collective).
The training stream is untouched: the data loader is not used, and the random generators lm-eval seeds are
restored (`evals.harness.rng_kept`), so a run with the callback on takes the steps it takes with it off.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
import torch

from gpt4_lightning.training.steps import OptimizerSteps

log = logging.getLogger(__name__)


class DownstreamEval(L.Callback):
    def __init__(self, tasks: str | None = None, every_n_steps: int = 0, limit: int | None = 100,
                 batch_size: int = 8, tasks_dir: str | None = None) -> None:
        from gpt4_lightning.evals.harness import task_names

        self.tasks = task_names(tasks)
        self.every_n_steps, self.limit, self.batch_size, self.tasks_dir = every_n_steps, limit, batch_size, tasks_dir
        self.steps = OptimizerSteps()

    @property
    def enabled(self) -> bool:
        return bool(self.tasks) and self.every_n_steps > 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.steps.start(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self.enabled or not self.steps.stepped(trainer) or trainer.global_step % self.every_n_steps:
            return
        start = time.perf_counter()
        model = self._unsharded(pl_module)  # a collective under FSDP: every rank
        if trainer.is_global_zero:
            scores = self._score(model, pl_module)
            scores["seconds"] = time.perf_counter() - start
            # to the loggers at this step's row (pl_module.log from this hook would repeat it on later rows)
            for logger in trainer.loggers:
                logger.log_metrics({f"eval/{k}": v for k, v in scores.items()}, step=trainer.global_step - 1)
        trainer.strategy.barrier("downstream_eval")

    def _unsharded(self, pl_module: L.LightningModule) -> torch.nn.Module | None:
        """The model as one module on global rank 0 (None elsewhere): the training model itself, or under FSDP
        a CPU copy built from the gathered weights."""
        model = pl_module.model
        if not any(type(p).__name__ == "DTensor" for p in model.parameters()):
            return model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from gpt4_lightning.model import GPT4

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not pl_module.trainer.is_global_zero:
            return None
        with torch.device("meta"):
            copy = GPT4.from_config(model.config)
        copy.load_state_dict(state, strict=True, assign=True)
        copy.materialize_buffers(torch.device("cpu"))
        return copy

    def _score(self, model: torch.nn.Module, pl_module: L.LightningModule) -> dict[str, float]:
        from gpt4_lightning.data.prepare.tokenizer import run_tokenizer
        from gpt4_lightning.evals.harness import run_tasks, scores

        meta = {"data_dir": pl_module.data_dir, "data_sources": pl_module.data_sources}
        tokenizer_json, eos_token = run_tokenizer(meta, None, "<|endoftext|>")
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                results = run_tasks(model, tokenizer_json, eos_token, self.tasks, limit=self.limit,
                                    batch_size=self.batch_size, tasks_dir=self.tasks_dir,
                                    device=str(next(model.parameters()).device))
        finally:
            model.train(was_training)
        return scores(results)
