"""gpt4_lightning: pretrain the GPT4 decoder with PyTorch Lightning and Hydra."""

from .model import GPT4, GPT4Config

__all__ = ["GPT4", "GPT4Config"]
__version__ = "0.1.0"
