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
    """`device=auto|cpu|cuda|cuda:N|...`, checked: a device this machine does not have is an error."""
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


def tokenizer_and_eos(data_dir: str | None, tokenizer_path: str | None) -> tuple[Tokenizer, int | None]:
    """The tokenizer the model was trained with (from its prepared data dir unless a path is given)."""
    if tokenizer_path is None:
        if data_dir is None:
            raise ValueError("the checkpoint does not name its data directory; pass tokenizer_path=<tokenizer.json>")
        manifest = Manifest.load(data_dir)
        return Tokenizer.from_file(str(Path(data_dir) / manifest.tokenizer_file)), manifest.eos_id
    if not Path(tokenizer_path).is_file():
        raise ValueError(f"tokenizer_path={tokenizer_path} does not exist; point it at a tokenizer.json")
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
    except Exception as e:  # tokenizers raises a bare Exception for anything it cannot parse
        raise ValueError(f"tokenizer_path={tokenizer_path} is not a tokenizer.json HF tokenizers can read ({e}); "
                         "point it at the tokenizer.json of the model's prepared data") from e
    return tokenizer, tokenizer.token_to_id("<|endoftext|>")


def generate(cfg: DictConfig) -> list[str]:
    if not isinstance(cfg.num_samples, int) or isinstance(cfg.num_samples, bool) or cfg.num_samples < 1:
        raise ValueError(f"num_samples={cfg.num_samples} must be an integer >= 1")
    device = pick_device(cfg.device)
    model, meta = load_model(cfg.ckpt_path, device)
    tokenizer, eos = tokenizer_and_eos(meta.get("gpt4_data_dir"), cfg.tokenizer_path)
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


if __name__ == "__main__":
    sys.argv = quote_prompt(sys.argv)
    launch("generate", generate)
