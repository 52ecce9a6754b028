"""lm-evaluation-harness on a GPT4 in this process: the model is wrapped as transformers' `GPT4ForCausalLM` (its
modules shared, nothing copied) and scored by lm-eval's own `HFLM`, the class `lm_eval --model hf` uses on an
export, so both give the same numbers. Needs the `eval` extra (lm-eval, transformers, accelerate)."""

from __future__ import annotations

import functools
import json
import logging
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt4_lightning.evals.next_line import TASK, write_task
from gpt4_lightning.model import GPT4

log = logging.getLogger(__name__)


def default_tasks_dir() -> Path:
    """Where the package's own task is written: `<cache>/lm_eval_tasks` (the prepare cache)."""
    from gpt4_lightning.utils.env import default_cache_dir

    return default_cache_dir() / "lm_eval_tasks"


def as_transformers(model: GPT4, eos_id: int | None, pad_id: int | None) -> Any:
    """`GPT4ForCausalLM` over `model`'s own modules (built on meta, then given `model.net`)."""
    from gpt4_lightning.hf.configuration_gpt4 import GPT4LightningConfig
    from gpt4_lightning.hf.export import hf_config
    from gpt4_lightning.hf.modeling_gpt4 import GPT4ForCausalLM

    dtype = next(model.parameters()).dtype
    config = GPT4LightningConfig(**{k: v for k, v in hf_config(model.config, dtype, eos_id, pad_id).items()
                                    if k not in ("auto_map", "model_type")})
    with torch.device("meta"):
        hf = GPT4ForCausalLM(config)
    hf.net = model.net
    return hf.eval()


def tokenizer_for(tokenizer_json: str, eos_token: str | None, max_length: int) -> Any:
    """The tokenizer as transformers' fast tokenizer, set as the export's `tokenizer_config.json` sets it."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from gpt4_lightning.hf.export import special_tokens

    tokenizer = Tokenizer.from_str(tokenizer_json)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special_tokens(tokenizer, eos_token),
                                   model_max_length=max_length, clean_up_tokenization_spaces=False)


def task_names(tasks: str | None) -> list[str]:
    """`"a, b"` (a config value) -> `["a", "b"]`."""
    return [t.strip() for t in (tasks or "").split(",") if t.strip()]


def scores(results: dict[str, Any]) -> dict[str, float]:
    """`<task>/<metric>` -> value from lm-eval's results (`"acc,none"`: a metric under a filter; stderrs
    dropped)."""
    return {f"{task}/{key.split(',')[0]}": float(value) for task, metrics in results["results"].items()
            for key, value in metrics.items()
            if "," in key and "stderr" not in key and isinstance(value, int | float)}


@contextmanager
def rng_kept():
    """lm-eval seeds `random`, numpy and torch; the caller's generators continue as if it had not run."""
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@functools.lru_cache(maxsize=4)
def _indexed(tasks_dir: Path, with_registry: bool) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(tasks_dir), include_defaults=with_registry)


def task_manager(tasks_dir: Path, tasks: list[str]) -> Any:
    """lm-eval's task index, once per process: `tasks_dir` alone when it has every task asked for (a fraction of
    a second), else with lm-eval's whole registry too (thousands of YAMLs, seconds)."""
    own = _indexed(tasks_dir, False)
    return own if all(t in own.all_tasks for t in tasks) else _indexed(tasks_dir, True)


def run_tasks(model: GPT4, tokenizer_json: str, eos_token: str | None, tasks: list[str], *,
              limit: int | None = None, batch_size: int = 8, tasks_dir: Path | None = None,
              device: str = "cpu") -> dict[str, Any]:
    """lm-eval's results dict (`results[task][metric]`, `config`, ...) for `tasks`; the package's own task
    (`gpt4l_next_line`) and any YAML under `tasks_dir` are found besides lm-eval's registry."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    tasks_dir = Path(tasks_dir) if tasks_dir else default_tasks_dir()
    if TASK in tasks:
        write_task(tasks_dir)
    manager = task_manager(tasks_dir, tasks)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"tasks={','.join(unknown)}: not an lm-eval task here (neither in its registry nor under "
                         f"{tasks_dir}); {TASK} is built in; put a task YAML with local data files in that folder")
    from gpt4_lightning.hf.export import model_max_length

    tokenizer = tokenizer_for(tokenizer_json, eos_token, model_max_length(model.config))
    hf = as_transformers(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    # lm-eval's window: the trained length (longer contexts are cut from the left, as for any HF model)
    lm = HFLM(pretrained=hf, tokenizer=tokenizer, batch_size=batch_size, device=device,
              max_length=model.config.max_seq_len)
    with rng_kept():
        results = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=False)
    return json.loads(json.dumps(results, default=str))  # plain JSON (lm-eval keeps numpy scalars, dtypes)
