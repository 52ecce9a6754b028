"""Writing files so that a crash (even SIGKILL or a power cut) leaves either the old file or the new one, never a
partial one: write a temporary name in the same directory, fsync it, rename it into place, fsync the directory.

Every atomic write of the package goes through `atomic_path` (a writer that hands the temporary path to a library
that writes by path: safetensors, torch.save, DCP) or `atomic_writer` (a file object).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in directory `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync a file, or every file under a directory, and the directory that holds them."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(path if path.is_dir() else path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove(path: Path) -> None:
    """Remove a file, a symlink or a directory tree; nothing if it is not there."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` (`.<name>.<random>.tmp`, nothing there yet) for the caller to write a
    file or a directory at; on success it is fsync'd and renamed to `path`, replacing what was there, and the
    directory is fsync'd. On any error the temporary is removed and `path` is untouched."""
    path = Path(path)
    tmp = Path(tempfile.mktemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, 0o666 & ~_umask())  # a shared cache must stay readable
        fsync_tree(tmp)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            remove(tmp)
        raise


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """`atomic_path` for a file written through a file object (`mode` "wb" or "w")."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a shared cache must stay readable
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """`path` holds `text` (UTF-8), written atomically."""
    with atomic_writer(path, "w") as f:
        f.write(text)


def check_writable_dir(path: str | os.PathLike, key: str, fix: str | None = None) -> None:
    """Fail at once, naming `key`, when directory `path` cannot be created or written: a path under a
    regular file, or under a directory this process may not write. Creates nothing."""
    path = Path(os.path.abspath(path))
    fix = fix or f"point {key} at a writable directory"
    ancestor = path
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        where = "is a file" if ancestor == path else f"is under {ancestor}, which is a file"
        raise ValueError(f"{key}={path} {where}, not a directory; {fix}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{key}={path}: {ancestor} is not writable; {fix}")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
