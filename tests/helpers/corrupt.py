"""Damage as a bad disk leaves it: a block of a file replaced by its complement, the file's size unchanged."""

from __future__ import annotations

from pathlib import Path


def complement_block(path: Path, offset: int, nbytes: int = 4096) -> None:
    """Replace `nbytes` of `path` at `offset` with their bitwise complement (every byte differs)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        block = f.read(nbytes)
        f.seek(offset)
        f.write(bytes(255 - b for b in block))
