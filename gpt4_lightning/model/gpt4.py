"""The seed's `GPT4` class: a `Transformer(Decoder)` wrapped in an `AutoregressiveWrapper`."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from .autoregressive import AutoregressiveWrapper
from .config import GPT4Config
from .kernels import AttentionBias, AttentionKernel
from .transformer import Transformer

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
WEIGHTS, CONFIG = "model.safetensors", "config.json"


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

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """`out_dir/model.safetensors` (full, unsharded weights) + `out_dir/config.json` (the GPT4
        arguments): plain data both, loadable without pickle by `from_pretrained`."""
        from safetensors.torch import save_file

        from gpt4_lightning.utils.files import atomic_path, write_text  # never reached in an export's copy

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_path(out_dir / WEIGHTS) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        write_text(out_dir / CONFIG, json.dumps(self.config.to_dict(), indent=2))
        return out_dir

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> GPT4:
        """Load what `save_pretrained` or `python -m gpt4_lightning.export` (a transformers directory: its
        config.json has the GPT4 arguments beside transformers' keys; weights in one file or in shards with
        `model.safetensors.index.json`) wrote: the directory, or the .safetensors file with config.json beside it."""
        from safetensors.torch import load_file

        path = Path(path)
        directory = path if path.is_dir() else path.parent
        index = directory / (WEIGHTS + ".index.json")
        if path.is_dir() and index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = [WEIGHTS if path.is_dir() else path.name]
        config_file = directory / CONFIG
        if not all((directory / f).is_file() for f in files) or not config_file.is_file():
            raise ValueError(f"{path}: expected {WEIGHTS} (or its shards and index) and {CONFIG} (from "
                             "gpt4_lightning.export) there")
        saved = json.loads(config_file.read_text())
        # a transformers config (the export's) holds the GPT4 arguments among its own keys
        config = GPT4Config.from_transformers(saved) if "model_type" in saved else GPT4Config.from_kwargs(**saved)
        with torch.device("meta"):
            model = cls.from_config(config)
        state: dict[str, Tensor] = {}
        for name in files:
            state.update(load_file(str(directory / name), device=str(device)))
        model.load_state_dict(state, strict=True, assign=True)  # the weights keep their saved dtype
        model.materialize_buffers(torch.device(device))
        return model.eval()

    # --- what parallelism, the memory planner and checkpoint loading use (they never walk `net.decoder`) ---
    @property
    def blocks(self) -> nn.ModuleList:
        """The decoder blocks: the unit activation checkpointing, compile and FSDP wrap (`blocks[i] = wrap(...)`)."""
        return self.net.decoder.blocks

    @property
    def root(self) -> nn.Module:
        """The module whose forward runs the whole network (`forward`, `loss` and `generate` call it): FSDP's
        root unit; it holds every parameter outside the blocks (embeddings, final norm, logits head)."""
        return self.net

    def init_modules(self) -> list[tuple[str, nn.Module]]:
        """The modules `init_weights` initialises, by their canonical (state-dict) name: what a sharded
        initialisation (`parallel.parallelize.init_sharded_weights`) visits one by one."""
        return self.net.init_modules()

    def materialize_buffers(self, device: torch.device) -> None:
        """Recompute non-persistent buffers (rotary frequencies, ALiBi slopes) left on the meta device, e.g.
        after loading weights with `assign=True` into a model built on meta."""
        self.net.materialize_buffers(device)

    def set_attention_kernel(self, kernel: AttentionKernel | None) -> None:
        """Run every attention with `kernel` (None: the default choice per device and `attn_backend`)."""
        self.net.decoder.set_kernel(kernel)

    def attention_bias(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> AttentionBias:
        """The bias a forward of `seq_len` tokens on `device` hands every block (the dense ALiBi bias is
        built once and cached across forwards)."""
        decoder = self.net.decoder
        return decoder.attention_bias(decoder.kernel_for(device, seq_len, seq_len), seq_len, seq_len, device, dtype)

    @property
    def checks_token_values(self) -> bool:
        """Whether forward checks every token id is in [0, num_tokens); off where tensors carry no values
        (the memory planner's fake tensors). Shapes and lengths are always checked."""
        return self.net.check_token_values

    @checks_token_values.setter
    def checks_token_values(self, value: bool) -> None:
        self.net.check_token_values = value

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_weights(self, seed: int | None = None) -> None:
        """Initialise all weights (after building on the meta device and sharding); see `Transformer.init_weights`."""
        self.net.init_weights(seed)

    @_log_failure("forward")
    def forward(self, tokens: Tensor, documents: Tensor | None = None) -> Tensor:
        return super().forward(tokens, documents)

    @_log_failure("loss")
    def loss(self, tokens: Tensor, documents: Tensor | None = None) -> Tensor:
        return super().loss(tokens, documents)

    @_log_failure("generate")
    def generate(self, prompt: Tensor, max_new_tokens: int, **sampling: Any) -> Tensor:
        return super().generate(prompt, max_new_tokens, **sampling)
