"""`python -m gpt4_lightning.evaluate ckpt_path=... [data_dir=...]`: loss and perplexity on a split."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from .checkpoint import load_model
from .cli import launch
from .data.shards import SPLITS, Manifest
from .generate import pick_device


@torch.no_grad()
def evaluate(cfg: DictConfig) -> dict[str, float]:
    if cfg.split not in SPLITS:
        raise ValueError(f"split={cfg.split} is not a split of a prepared data directory; use split=val or split=train")
    for key in ("seq_len", "batch_size"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise ValueError(f"{key}={cfg[key]} must be an integer >= 1")
    if cfg.max_batches is not None and (not isinstance(cfg.max_batches, int) or cfg.max_batches < 1):
        raise ValueError(f"max_batches={cfg.max_batches} must be an integer >= 1, or null for the whole split")
    device = pick_device(cfg.device)
    model, meta = load_model(cfg.ckpt_path, device)
    data_dir = cfg.data_dir or meta.get("gpt4_data_dir")
    if data_dir is None:
        raise ValueError("the checkpoint does not name its data directory; pass data_dir=<prepared dir>")
    Manifest.load(data_dir)  # a missing or damaged data directory fails here, before the (slow) Lightning import
    from .data.datamodule import GPT4DataModule
    from .module import perplexity

    seq_len = cfg.seq_len if model.config.can_extrapolate else min(cfg.seq_len, model.config.max_seq_len)
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
    loss = total / count
    result = {"loss": loss, "perplexity": perplexity(loss), "windows": count}
    print(f"{cfg.split} loss {loss:.4f}  perplexity {perplexity(loss):.2f}  ({count} windows of {seq_len} tokens, "
          f"{data_dir}, step {meta.get('global_step')})")
    return result


if __name__ == "__main__":
    launch("evaluate", evaluate)
