"""The typed contract of the GPT4 model: the seed's 15 arguments plus a few decoder extras.

Every combination is validated here, in one place, so the modules can trust their inputs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

ATTN_BACKENDS = ("auto", "flex", "sdpa")


@dataclass(frozen=True)
class GPT4Config:
    """Hyper-parameters of `GPT4`. The first 15 fields are the seed's, with the seed's defaults.

    Extras (keyword-only in `GPT4`, routed like x-transformers' decoder kwargs):
        ff_mult: hidden width of the feed-forward as a multiple of `dim`.
        attn_backend: fused kernel used when `attn_flash` is on: "auto" (FlexAttention on CUDA,
            SDPA elsewhere), "flex" or "sdpa". Ignored when `attn_flash` is off (reference math).
        rotary_emb_dim: head dimensions rotated by rotary-xPos (default `dim_head // 2`, as in
            the lineage); the rest of each head is left unrotated.
        rotary_xpos_scale_base: xPos decay length (lineage: 512).
        attn_qk_norm_scale: initial learned temperature of qk-norm without dim scale (lineage: 10).
    """

    num_tokens: int = 50432
    max_seq_len: int = 8192
    dim: int = 2560
    depth: int = 32
    dim_head: int = 128
    heads: int = 24
    use_abs_pos_emb: bool = False
    alibi_pos_bias: bool = True
    alibi_num_heads: int = 12
    rotary_xpos: bool = True
    attn_flash: bool = True
    attn_one_kv_head: bool = True
    qk_norm: bool = True
    attn_qk_norm: bool = True
    attn_qk_norm_dim_scale: bool = True
    # decoder extras
    ff_mult: int = 4
    attn_backend: str = "auto"  # one of ATTN_BACKENDS (a plain str so Hydra can type-check it)
    rotary_emb_dim: int | None = None
    rotary_xpos_scale_base: float = 512.0
    attn_qk_norm_scale: float = 10.0

    def __post_init__(self) -> None:
        for name in ("num_tokens", "max_seq_len", "dim", "depth", "dim_head", "heads", "ff_mult"):
            _check_positive_int(name, getattr(self, name))
        for name in ("use_abs_pos_emb", "alibi_pos_bias", "rotary_xpos", "attn_flash",
                     "attn_one_kv_head", "qk_norm", "attn_qk_norm", "attn_qk_norm_dim_scale"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.alibi_pos_bias:
            _check_positive_int("alibi_num_heads", self.alibi_num_heads)
            if self.alibi_num_heads > self.heads:
                raise ValueError(
                    f"alibi_num_heads={self.alibi_num_heads} must be in [1, heads={self.heads}]: "
                    "ALiBi biases a subset of the heads; lower alibi_num_heads or raise heads"
                )
        if self.attn_backend not in ATTN_BACKENDS:
            raise ValueError(f"attn_backend must be one of {ATTN_BACKENDS}, got {self.attn_backend!r}")
        if self.rotary_xpos:
            rot = self.rotary_dim
            if rot < 2 or rot % 2 or rot > self.dim_head:
                raise ValueError(
                    f"dim_head={self.dim_head} is too small for the rotary-xPos split: the rotated part "
                    f"(rotary_emb_dim={rot}) must be an even number in [2, dim_head]; "
                    "use dim_head >= 4 (a multiple of 4) or set rotary_emb_dim"
                )
            if not (isinstance(self.rotary_xpos_scale_base, (int, float)) and self.rotary_xpos_scale_base > 0):
                raise ValueError(f"rotary_xpos_scale_base must be > 0, got {self.rotary_xpos_scale_base!r}")
        if self.use_qk_norm and self.dim_head <= 2:
            raise ValueError(
                f"dim_head={self.dim_head} is too small for qk-norm (l2-normalised heads of <= 2 dims "
                "carry no signal); use dim_head >= 4 or set qk_norm=False"
            )
        if not (isinstance(self.attn_qk_norm_scale, (int, float)) and math.isfinite(self.attn_qk_norm_scale)
                and self.attn_qk_norm_scale > 0):
            raise ValueError(f"attn_qk_norm_scale must be a finite number > 0, got {self.attn_qk_norm_scale!r}")

    @property
    def use_qk_norm(self) -> bool:
        """qk-norm is on when both switches are: `qk_norm` (model level) and `attn_qk_norm` (decoder level)."""
        return self.qk_norm and self.attn_qk_norm

    @property
    def kv_heads(self) -> int:
        return 1 if self.attn_one_kv_head else self.heads

    @property
    def rotary_dim(self) -> int:
        return self.rotary_emb_dim if self.rotary_emb_dim is not None else self.dim_head // 2

    @property
    def can_extrapolate(self) -> bool:
        """Whether sequences longer than `max_seq_len` have defined positions (no learned table)."""
        return not self.use_abs_pos_emb

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> GPT4Config:
        """Build from keyword arguments, naming any unknown one (a typo must not pass silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown GPT4 argument(s) {unknown}; allowed: {sorted(known)}")
        return cls(**kwargs)

    @classmethod
    def from_transformers(cls, values: dict[str, Any]) -> GPT4Config:
        """The GPT4 arguments among the keys of a transformers `config.json` (the export's: the rest are
        transformers' own, vocab_size, auto_map, ...)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer (>= 1), got {value!r}")
