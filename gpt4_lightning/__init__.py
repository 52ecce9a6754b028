"""gpt4_lightning: pretrain the GPT4 decoder with PyTorch Lightning and Hydra."""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["GPT4", "GPT4Config"]

if TYPE_CHECKING:
    from gpt4_lightning.model import GPT4, GPT4Config


def __getattr__(name: str) -> Any:
    # lazy: entry points that never touch the model (prepare) do not pay torch's import time for it
    if name in __all__:
        from gpt4_lightning import model

        return getattr(model, name)
    raise AttributeError(f"module 'gpt4_lightning' has no attribute {name!r}")
