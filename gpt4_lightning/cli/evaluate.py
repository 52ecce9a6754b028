"""`python -m gpt4_lightning.evaluate ckpt_path=... [data_dir=...]`: loss and perplexity on a split."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from ..checkpoint.load import load_model
from ..config import EvaluateConfig, to_typed
from ..data.shards import Manifest
from ..training.devices import pick_device
from .launch import launch


@torch.no_grad()
def evaluate(dict_cfg: DictConfig) -> dict[str, float]:
    cfg: EvaluateConfig = to_typed(dict_cfg)
    device = pick_device(cfg.device)
    model, meta = load_model(cfg.ckpt_path, device)
    data_dir = cfg.data_dir or meta["data_dir"]
    if data_dir is None:
        raise ValueError("the checkpoint does not name its data directory; pass data_dir=<prepared dir>")
    Manifest.load(data_dir)  # a missing or damaged data directory fails here, before the (slow) Lightning import
    from ..data.datamodule import GPT4DataModule
    from ..training.module import perplexity

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


def main() -> None:
    launch("evaluate", evaluate)


if __name__ == "__main__":
    main()
