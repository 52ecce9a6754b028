"""The GPT4 model: plain PyTorch, no Lightning, no parallelism (applied from outside)."""

from .autoregressive import AutoregressiveWrapper
from .config import GPT4Config
from .decoder import Decoder, DecoderBlock
from .gpt4 import GPT4
from .kv_cache import KVCache
from .transformer import Transformer

__all__ = ["GPT4", "AutoregressiveWrapper", "Decoder", "DecoderBlock", "GPT4Config", "KVCache", "Transformer"]
