"""Names: close-match suggestions for a misspelt key or option, and the dtype names configs use."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("fp32", "bf16", "fp16")


def closest(name: str, candidates: Iterable[str], n: int = 1) -> list[str]:
    """The `n` candidates closest to `name` (difflib's ratio >= 0.6), best first; [] if none is close."""
    return difflib.get_close_matches(str(name), [str(c) for c in candidates], n=n)


def torch_dtype(name: str | None) -> torch.dtype | None:
    """"fp32" | "bf16" | "fp16" -> the torch dtype; None -> None (keep the tensors' own dtype)."""
    if name is None:
        return None
    import torch  # lazily: the configs that name dtypes are composed without torch

    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(DTYPE_NAMES)}")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
