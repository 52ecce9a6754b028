"""`python -m gpt4_lightning.evaluate ckpt_path=... [data_dir=...|source=...] [tasks=<lm-eval tasks>]`: loss and
perplexity on a split (a mixture's checkpoint: of each source, and their weighted mean), and with `tasks`
lm-evaluation-harness tasks (`gpt4_lightning.evals`), whose results JSON goes into the run directory.
`ckpt_path` may also be an export (`python -m gpt4_lightning.export`): then only `tasks` unless `data_dir`."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig

from gpt4_lightning.checkpoint.load import load_model
from gpt4_lightning.cli.launch import launch
from gpt4_lightning.config import EvaluateConfig, to_typed
from gpt4_lightning.data.shards import Manifest
from gpt4_lightning.training.devices import pick_device


@torch.no_grad()
def evaluate(dict_cfg: DictConfig) -> dict[str, float]:
    cfg: EvaluateConfig = to_typed(dict_cfg)
    device = pick_device(cfg.device)
    if (Path(cfg.ckpt_path) / "config.json").is_file():  # an export
        from gpt4_lightning.model import GPT4

        model, meta = GPT4.from_pretrained(cfg.ckpt_path, device).eval(), {"export": cfg.ckpt_path}
    else:
        model, meta = load_model(cfg.ckpt_path, device)
    result: dict[str, float] = {}
    if not (cfg.tasks and meta.get("export") and not cfg.data_dir):
        result |= _losses(model, meta, cfg, device)
    if cfg.tasks:
        result |= _tasks(model, meta, cfg, device)
    return result


def _losses(model: torch.nn.Module, meta: dict, cfg: EvaluateConfig, device: torch.device) -> dict[str, float]:
    sources = [] if cfg.data_dir else (meta.get("data_sources") or [])
    if cfg.source is not None:
        chosen = [s for s in sources if s["name"] == cfg.source]
        if not chosen:
            names = ", ".join(s["name"] for s in sources) or "none: it was trained on one data directory"
            raise ValueError(f"source={cfg.source} is not a source of the checkpoint's data mixture ({names})")
        sources = chosen
    data_dirs = [(s["name"], s["dir"], s["weight"]) for s in sources] or [(None, cfg.data_dir or meta.get("data_dir"),
                                                                           1)]
    if data_dirs[0][1] is None:
        raise ValueError("the checkpoint does not name its data directory; pass data_dir=<prepared dir>")
    for _, data_dir, _ in data_dirs:
        Manifest.load(data_dir)  # a missing or damaged directory fails here, before the (slow) Lightning import
    from gpt4_lightning.training.module import perplexity

    seq_len = cfg.seq_len if model.config.can_extrapolate else min(cfg.seq_len, model.config.max_seq_len)
    result: dict[str, float] = {}
    weighted, weights = 0.0, 0.0
    for name, data_dir, weight in data_dirs:
        loss, count = _score(model, data_dir, seq_len, cfg, device)
        prefix = f"{name}/" if name else ""
        result |= {f"{prefix}loss": loss, f"{prefix}perplexity": perplexity(loss), f"{prefix}windows": count}
        label = f"{cfg.split} {name}" if name else cfg.split
        print(f"{label} loss {loss:.4f}  perplexity {perplexity(loss):.2f}  ({count} windows of {seq_len} tokens, "
              f"{data_dir}, step {meta.get('global_step')})")
        weighted, weights = weighted + weight * loss, weights + weight
    if len(data_dirs) > 1:
        loss = weighted / weights
        result |= {"loss": loss, "perplexity": perplexity(loss)}
        print(f"{cfg.split} loss {loss:.4f}  perplexity {perplexity(loss):.2f}  (the mixture's weighted mean)")
    return result


def _tasks(model: torch.nn.Module, meta: dict, cfg: EvaluateConfig, device: torch.device) -> dict[str, float]:
    """lm-eval on the model in this process; results JSON in `results_dir` (default: the checkpoint's run
    directory's `lm_eval/`)."""
    from gpt4_lightning.data.prepare.tokenizer import run_tokenizer
    from gpt4_lightning.evals.harness import run_tasks, scores, task_names

    tokenizer_json, eos_token = run_tokenizer(meta, cfg.tokenizer_path, "<|endoftext|>")
    results = run_tasks(model, tokenizer_json, eos_token, task_names(cfg.tasks), limit=cfg.limit,
                        batch_size=cfg.batch_size, tasks_dir=Path(cfg.tasks_dir) if cfg.tasks_dir else None,
                        device=str(device))
    out = _results_dir(cfg) / f"results_step{meta.get('global_step', 'export')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    found = scores(results)
    for task in results["results"]:
        print(f"{task}: " + "  ".join(f"{key.split('/', 1)[1]} {value:.4f}" for key, value in found.items()
                                      if key.split("/", 1)[0] == task))
    print(f"lm-eval results: {out}")
    return found


def _results_dir(cfg: EvaluateConfig) -> Path:
    if cfg.results_dir:
        return Path(cfg.results_dir)
    ckpt = Path(cfg.ckpt_path).absolute()
    return ckpt.parent.parent / "lm_eval" if ckpt.parent.name == "checkpoints" else Path("lm_eval").absolute()


def _score(model: torch.nn.Module, data_dir: str, seq_len: int, cfg: EvaluateConfig,
           device: torch.device) -> tuple[float, int]:
    """Mean loss over one data directory's split (`cfg.max_batches` at most) and the windows scored."""
    from gpt4_lightning.data.stream.datamodule import GPT4DataModule

    datamodule = GPT4DataModule(data_dir, seq_len=seq_len, batch_size=cfg.batch_size,
                                max_token_id=model.config.num_tokens)
    datamodule.setup("validate")
    loader = datamodule.make_val_loader() if cfg.split == "val" else datamodule.make_train_loader()
    total, count = 0.0, 0
    for i, batch in enumerate(loader):
        if cfg.max_batches is not None and i >= cfg.max_batches:
            break
        total += model.loss(batch.to(device)).item() * batch.shape[0]
        count += batch.shape[0]
    if count == 0:
        raise ValueError(f"{data_dir} has no {cfg.split} windows of seq_len={seq_len}; lower seq_len")
    return total / count, count


def main() -> None:
    launch("evaluate", evaluate)


if __name__ == "__main__":
    main()
