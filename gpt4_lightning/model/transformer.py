"""The Transformer: embeddings, the decoder, logits."""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn

from .config import GPT4Config
from .decoder import Decoder
from .embedding import AbsolutePositionalEmbedding, TokenEmbedding
from .init import init_linear_
from .kv_cache import KVCache


def module_seed(seed: int, name: str) -> int:
    """A stable 63-bit seed for one module: independent of Python's hash randomisation."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest(), "little") >> 1


def canonical_name(name: str) -> str:
    return ".".join(part for part in name.split(".") if part not in ("_checkpoint_wrapped_module", "_orig_mod"))


def check_tokens(tokens: Tensor, cfg: GPT4Config, offset: int = 0, values: bool = True) -> None:
    """Raise `ValueError` naming the problem for a token tensor the model cannot take (`values`: also the ids,
    which reads the tensor)."""
    if not isinstance(tokens, Tensor):
        raise ValueError(f"tokens must be a torch.Tensor of shape (batch, seq_len), got {type(tokens).__name__}")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must be an integer tensor (torch.long), got dtype {tokens.dtype}")
    if tokens.ndim != 2:
        raise ValueError(f"tokens must have shape (batch, seq_len), got {tuple(tokens.shape)} ({tokens.ndim}-D)")
    if tokens.shape[1] == 0:
        raise ValueError("tokens must hold at least one position, got seq_len 0")
    end = offset + tokens.shape[1]
    if end > cfg.max_seq_len and not cfg.can_extrapolate:
        raise ValueError(
            f"sequence length {end} exceeds max_seq_len={cfg.max_seq_len} and use_abs_pos_emb=True has no "
            f"positions past it; shorten the input to <= {cfg.max_seq_len} tokens or raise max_seq_len"
        )
    outside = values and tokens.device.type != "meta" and tokens.numel()
    if outside and bool(((tokens < 0) | (tokens >= cfg.num_tokens)).any()):
        lo, hi = int(tokens.min()), int(tokens.max())
        raise ValueError(
            f"token ids must be in [0, num_tokens={cfg.num_tokens}), got values in [{lo}, {hi}]; "
            "check the tokenizer's vocab size against num_tokens"
        )


class Transformer(nn.Module):
    """`(b, n)` token ids -> `(b, n, num_tokens)` logits."""

    def __init__(self, cfg: GPT4Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_emb = TokenEmbedding(cfg.num_tokens, cfg.dim)
        self.abs_pos_emb = AbsolutePositionalEmbedding(cfg.dim, cfg.max_seq_len) if cfg.use_abs_pos_emb else None
        self.decoder = Decoder(cfg)
        self.to_logits = nn.Linear(cfg.dim, cfg.num_tokens, bias=False)
        self.check_token_values = True
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_linear_(self.to_logits)

    def init_weights(self, seed: int | None = None) -> None:
        """(Re-)initialise every parameter and buffer, e.g. after building on the meta device and
        sharding. Each module initialises the `nn.Linear`s it owns, so bare Linears are skipped.

        With `seed`, each module draws from its own generator seeded by (seed, its name), so the
        values do not depend on how many modules were initialised before it — a sharded model
        initialised shard by shard gets exactly the weights of an unsharded one."""
        for name, module in self.init_modules():
            if seed is None:
                module.reset_parameters()
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(module_seed(seed, name))
                module.reset_parameters()

    def init_modules(self) -> list[tuple[str, nn.Module]]:
        """The modules `init_weights` initialises, by their canonical name (as in the state dict: wrapper
        levels such as activation checkpointing's are left out, so the seeds do not depend on them)."""
        return [(canonical_name(name), module) for name, module in self.named_modules()
                if not isinstance(module, nn.Linear) and hasattr(module, "reset_parameters")]

    def materialize_buffers(self, device: torch.device) -> None:
        """Recompute non-persistent buffers (rotary frequencies, ALiBi slopes) still on the meta device,
        e.g. after loading weights with `assign=True` into a model built on meta."""
        for module in self.modules():
            if any(b.is_meta for b in module.buffers(recurse=False)):
                module.to_empty(device=device, recurse=False)
                module.reset_parameters()

    def forward(self, tokens: Tensor, cache: KVCache | None = None, documents: Tensor | None = None) -> Tensor:
        """`documents` `(b, n)`: document ids (`kernels.document_ids`) for document masking; not with a cache."""
        offset = cache.length if cache is not None else 0
        check_tokens(tokens, self.cfg, offset, values=self.check_token_values)
        if documents is not None and (cache is not None or documents.shape != tokens.shape):
            raise ValueError(f"documents must have the tokens' shape {tuple(tokens.shape)} and no KV cache, got "
                             f"{tuple(documents.shape)}{' with a cache' if cache is not None else ''}")
        x = self.token_emb(tokens)  # (b, n, dim)
        if self.abs_pos_emb is not None:
            x = x + self.abs_pos_emb(offset, tokens.shape[1])
        x = self.decoder(x, cache, documents)
        return self.to_logits(x)  # (b, n, num_tokens)
