"""The GPT4 model: plain PyTorch, no Lightning, no parallelism (applied from outside).

Names are imported on first use: the config schema needs `GPT4Config` (plain dataclasses) and a command
rejected at compose time should not wait ~2 s for torch."""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .autoregressive import AutoregressiveWrapper
    from .config import GPT4Config
    from .decoder import Decoder, DecoderBlock
    from .gpt4 import GPT4
    from .kv_cache import KVCache
    from .transformer import Transformer

_HOMES = {"GPT4": "gpt4", "AutoregressiveWrapper": "autoregressive", "Decoder": "decoder",
          "DecoderBlock": "decoder", "GPT4Config": "config", "KVCache": "kv_cache", "Transformer": "transformer"}
__all__ = ["GPT4", "AutoregressiveWrapper", "Decoder", "DecoderBlock", "GPT4Config", "KVCache", "Transformer"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
