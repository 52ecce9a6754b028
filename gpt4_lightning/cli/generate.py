"""`python -m gpt4_lightning.generate ckpt_path=... prompt="def fib(n):"`: sample from a checkpoint."""

from __future__ import annotations

import re
import sys

import torch
from omegaconf import DictConfig

from gpt4_lightning.checkpoint.load import load_model
from gpt4_lightning.cli.launch import launch
from gpt4_lightning.config import GenerateConfig, to_typed
from gpt4_lightning.data.prepare.tokenizer import tokenizer_and_eos
from gpt4_lightning.training.devices import pick_device


def generate(dict_cfg: DictConfig) -> list[str]:
    cfg: GenerateConfig = to_typed(dict_cfg)
    device = pick_device(cfg.device)
    model, meta = load_model(cfg.ckpt_path, device)
    tokenizer, eos = tokenizer_and_eos(meta["data_dir"], cfg.tokenizer_path)
    ids = tokenizer.encode(cfg.prompt).ids
    if not ids:
        raise ValueError("prompt is empty (it encodes to no tokens); pass prompt=\"some text\"")
    max_seq_len = model.config.max_seq_len
    if len(ids) >= max_seq_len and not model.config.can_extrapolate:
        raise ValueError(f"prompt is {len(ids)} tokens but the model has max_seq_len={max_seq_len} and learned "
                         "positions (use_abs_pos_emb), which cannot extrapolate; shorten the prompt to < "
                         f"{max_seq_len} tokens")
    num_tokens = model.config.num_tokens
    if max(ids) >= num_tokens:
        source, fix = ((f"tokenizer_path={cfg.tokenizer_path}", "drop tokenizer_path to use the checkpoint's own")
                       if cfg.tokenizer_path else ("the checkpoint's tokenizer", "pass tokenizer_path=<the "
                                                   "tokenizer.json the model was trained with>"))
        raise ValueError(f"{source} encodes the prompt to token id {max(ids)} but the model has num_tokens="
                         f"{num_tokens} (ids 0 to {num_tokens - 1}): it is not the tokenizer the model was trained "
                         f"with; {fix}")
    prompt = torch.tensor([ids] * cfg.num_samples, device=device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    new = model.generate(prompt, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                         eos_token=eos if cfg.stop_at_eos else None, generator=generator)
    samples = []
    for row in new.tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos)]
        samples.append(cfg.prompt + tokenizer.decode(row))
    for i, text in enumerate(samples):
        print(f"--- sample {i} (step {meta.get('global_step')}) ---\n{text}")
    return samples


def quote_prompt(argv: list[str]) -> list[str]:
    """`prompt=def fib(n):` as the shell passes it is not a valid Hydra override (parentheses, colons):
    quote the value for Hydra unless the user already did, so the natural command line works."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in ("prompt", "+prompt") and not (value[:1] in "'\"" and value[-1:] == value[:1] and value):
            # Hydra escapes a backslash only before a quote or at the end of a quoted value
            arg = key + "='" + re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), value) + "'"
        out.append(arg)
    return out


def main() -> None:
    sys.argv = quote_prompt(sys.argv)
    launch("generate", generate)


if __name__ == "__main__":
    main()
