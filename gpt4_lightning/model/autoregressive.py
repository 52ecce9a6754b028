"""Next-token loss and sampling around a `Transformer`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .decoder import compute_dtype
from .kv_cache import KVCache
from .transformer import Transformer, check_tokens


def filter_top_k(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits per row, -inf elsewhere. `(b, v) -> (b, v)`."""
    kth = logits.topk(k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: Tensor, p: float) -> Tensor:
    """Keep the smallest set of tokens whose probability mass reaches p (nucleus), -inf elsewhere."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    drop = probs.cumsum(dim=-1) - probs >= p  # mass before this token already reaches p; top-1 always kept
    return logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))


class AutoregressiveWrapper(nn.Module):
    """Wraps a `Transformer`: `forward` gives logits, `loss` the next-token cross-entropy,
    `generate` samples with a KV cache."""

    def __init__(self, net: Transformer, ignore_index: int = -100) -> None:
        super().__init__()
        self.net = net
        self.ignore_index = ignore_index

    def forward(self, tokens: Tensor, documents: Tensor | None = None) -> Tensor:
        """`(b, n)` -> logits `(b, n, num_tokens)`; `documents` `(b, n)`: document masking (see `Decoder`)."""
        return self.net(tokens, documents=documents)

    def loss(self, tokens: Tensor, documents: Tensor | None = None) -> Tensor:
        """Mean cross-entropy of predicting `tokens[:, 1:]` from `tokens[:, :-1]`. `(b, n + 1)` -> scalar.
        Targets equal to `ignore_index` do not count. `documents` `(b, n + 1)`, aligned with `tokens`: each
        input attends only within its document."""
        if isinstance(tokens, Tensor) and tokens.ndim == 2 and tokens.shape[1] < 2:
            raise ValueError(
                f"loss needs windows of >= 2 tokens (inputs + next-token targets), got {tuple(tokens.shape)}")
        logits = self.net(tokens[:, :-1], documents=documents[:, :-1] if documents is not None else None)
        return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten(), ignore_index=self.ignore_index)

    @torch.no_grad()
    def generate(self, prompt: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, eos_token: int | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> Tensor:
        """Sample up to `max_new_tokens` after `prompt` `(b, n)` (or `(n,)`); returns only the new
        tokens `(b, m)`, m <= max_new_tokens (fewer once every row has emitted `eos_token`;
        positions after a row's EOS are filled with EOS).

        temperature 0 is greedy; top_k keeps the k most likely tokens; top_p the nucleus of mass p.
        With `use_cache` each step feeds one token and reuses cached keys/values.
        """
        cfg = self.net.cfg
        if isinstance(prompt, Tensor) and prompt.ndim == 1:
            prompt = prompt[None]
        check_tokens(prompt, cfg)
        _check_sampling(cfg.num_tokens, max_new_tokens, temperature, top_k, top_p, eos_token)
        total = prompt.shape[1] + max_new_tokens
        if total > cfg.max_seq_len and not cfg.can_extrapolate:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} with a {prompt.shape[1]}-token prompt reaches {total} positions, "
                f"past max_seq_len={cfg.max_seq_len} (use_abs_pos_emb cannot extrapolate); "
                f"use max_new_tokens <= {cfg.max_seq_len - prompt.shape[1]}"
            )
        was_training = self.training
        self.eval()
        try:
            cache = None
            if use_cache:
                dtype = compute_dtype(prompt.device, next(self.net.parameters()).dtype)
                cache = KVCache(cfg.depth, prompt.shape[0], cfg.kv_heads, total, cfg.dim_head, prompt.device, dtype)
            seq, new = prompt, []
            done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
            logits = self.net(prompt, cache)[:, -1]
            for step in range(max_new_tokens):
                token = sample(logits, temperature, top_k, top_p, generator)
                if eos_token is not None:
                    token = token.masked_fill(done, eos_token)
                    done |= token == eos_token
                new.append(token)
                if step == max_new_tokens - 1 or (eos_token is not None and bool(done.all())):
                    break
                if cache is not None:
                    logits = self.net(token[:, None], cache)[:, -1]
                else:
                    seq = torch.cat((seq, token[:, None]), dim=1)
                    logits = self.net(seq)[:, -1]
            return torch.stack(new, dim=1)
        finally:
            self.train(was_training)


def sample(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None,
           generator: torch.Generator | None = None) -> Tensor:
    """One token per row from `(b, v)` logits."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = filter_top_k(logits, top_k)
    if top_p is not None:
        logits = filter_top_p(logits, top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def _check_sampling(num_tokens: int, max_new_tokens: int, temperature: float, top_k: int | None,
                    top_p: float | None, eos_token: int | None) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or not 1 <= top_k <= num_tokens):
        raise ValueError(f"top_k must be in [1, num_tokens={num_tokens}] or None, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")
    if eos_token is not None and (not isinstance(eos_token, int) or not 0 <= eos_token < num_tokens):
        raise ValueError(f"eos_token must be in [0, num_tokens={num_tokens}) or None, got {eos_token!r}")
