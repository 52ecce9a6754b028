"""The seed's `GPT4` class: a `Transformer(Decoder)` wrapped in an `AutoregressiveWrapper`."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from torch import Tensor

from .autoregressive import AutoregressiveWrapper
from .config import GPT4Config
from .transformer import Transformer

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def _log_failure(what: str) -> Callable[[F], F]:
    """Log an exception raised by `what` through `logging`, then re-raise it (the seed's contract)."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                logger.error("GPT4 %s failed: %s: %s", what, type(e).__name__, e)
                raise

        return wrapper  # type: ignore[return-value]

    return decorate


class GPT4(AutoregressiveWrapper):
    """The GPT4 decoder of the seed, every argument and default as the seed gives them.

    `forward(tokens (b, n)) -> logits (b, n, num_tokens)`; `loss(tokens (b, n + 1))`;
    `generate(prompt, max_new_tokens, ...)`. Extra keyword arguments are the decoder extras of
    `GPT4Config` (ff_mult, attn_backend, rotary_emb_dim, rotary_xpos_scale_base, attn_qk_norm_scale).
    """

    @_log_failure("construction")
    def __init__(
        self,
        num_tokens: int = 50432,
        max_seq_len: int = 8192,
        dim: int = 2560,
        depth: int = 32,
        dim_head: int = 128,
        heads: int = 24,
        use_abs_pos_emb: bool = False,
        alibi_pos_bias: bool = True,
        alibi_num_heads: int = 12,
        rotary_xpos: bool = True,
        attn_flash: bool = True,
        attn_one_kv_head: bool = True,
        qk_norm: bool = True,
        attn_qk_norm: bool = True,
        attn_qk_norm_dim_scale: bool = True,
        **decoder_kwargs: Any,
    ) -> None:
        config = GPT4Config.from_kwargs(
            num_tokens=num_tokens, max_seq_len=max_seq_len, dim=dim, depth=depth, dim_head=dim_head,
            heads=heads, use_abs_pos_emb=use_abs_pos_emb, alibi_pos_bias=alibi_pos_bias,
            alibi_num_heads=alibi_num_heads, rotary_xpos=rotary_xpos, attn_flash=attn_flash,
            attn_one_kv_head=attn_one_kv_head, qk_norm=qk_norm, attn_qk_norm=attn_qk_norm,
            attn_qk_norm_dim_scale=attn_qk_norm_dim_scale, **decoder_kwargs,
        )
        super().__init__(Transformer(config))
        self.config = config

    @classmethod
    def from_config(cls, config: GPT4Config) -> GPT4:
        return cls(**config.to_dict())

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_weights(self) -> None:
        """Initialise all weights (after building on the meta device and sharding)."""
        self.net.init_weights()

    @_log_failure("forward")
    def forward(self, tokens: Tensor) -> Tensor:
        return super().forward(tokens)

    @_log_failure("loss")
    def loss(self, tokens: Tensor) -> Tensor:
        return super().loss(tokens)

    @_log_failure("generate")
    def generate(self, prompt: Tensor, max_new_tokens: int, **sampling: Any) -> Tensor:
        return super().generate(prompt, max_new_tokens, **sampling)
