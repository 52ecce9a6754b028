"""`python -m gpt4_lightning.generate ckpt_path=... prompt="def fib(n):"`: sample from a checkpoint."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig
from tokenizers import Tokenizer

from .checkpoint import load_model
from .cli import launch
from .data.shards import Manifest


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def tokenizer_and_eos(data_dir: str | None, tokenizer_path: str | None) -> tuple[Tokenizer, int | None]:
    """The tokenizer the model was trained with (from its prepared data dir unless a path is given)."""
    if tokenizer_path is None:
        if data_dir is None:
            raise ValueError("the checkpoint does not name its data directory; pass tokenizer_path=<tokenizer.json>")
        manifest = Manifest.load(data_dir)
        return Tokenizer.from_file(str(Path(data_dir) / manifest.tokenizer_file)), manifest.eos_id
    if not Path(tokenizer_path).is_file():
        raise ValueError(f"tokenizer_path={tokenizer_path} does not exist; point it at a tokenizer.json")
    tokenizer = Tokenizer.from_file(tokenizer_path)
    return tokenizer, tokenizer.token_to_id("<|endoftext|>")


def generate(cfg: DictConfig) -> list[str]:
    device = pick_device(cfg.device)
    model, meta = load_model(cfg.ckpt_path, device)
    tokenizer, eos = tokenizer_and_eos(meta.get("gpt4_data_dir"), cfg.tokenizer_path)
    ids = tokenizer.encode(cfg.prompt).ids
    if not ids:
        raise ValueError("prompt is empty (it encodes to no tokens); pass prompt=\"some text\"")
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


if __name__ == "__main__":
    sys.argv = quote_prompt(sys.argv)
    launch("generate", generate)
