"""On-disk token shards: raw token arrays (`np.memmap`-able) plus a JSON manifest.

Layout of a prepared data directory:

    manifest.json          written last, atomically: its presence means every shard is complete
    tokenizer.json         the tokenizer the ids come from (copied or trained)
    train_00000.bin ...    raw little-endian token ids, documents separated by EOS
    val_00000.bin ...

Every file is written under a temporary name in the same directory and renamed into place, so
a crash (even SIGKILL) never leaves a manifest that points at a partial shard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SPLITS = ("train", "val")


class DataError(ValueError):
    """A data directory, shard or manifest that cannot be used; the message names the file and the fix."""


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id of the vocabulary."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_writer(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write `path` through a temporary file in its directory, fsync'd and renamed into place on
    success; on any error the temporary file is removed and `path` is untouched."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a shared cache must stay readable
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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


@dataclass(frozen=True)
class Shard:
    file: str
    tokens: int
    sha256: str


@dataclass
class Manifest:
    """What `prepare` wrote; `load` checks it before anything is read."""

    dtype: str
    vocab_size: int
    eos_id: int
    tokenizer_file: str
    tokenizer_sha256: str
    splits: dict[str, list[Shard]]
    source: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def num_tokens(self, split: str) -> int:
        return sum(s.tokens for s in self.splits.get(split, []))

    def save(self, data_dir: Path) -> None:
        payload = dataclasses.asdict(self)
        with atomic_writer(Path(data_dir) / MANIFEST, "w") as f:
            json.dump(payload, f, indent=2)

    @classmethod
    def load(cls, data_dir: str | os.PathLike, verify: bool = False, check_sizes: bool = True) -> Manifest:
        """Read and check `data_dir/manifest.json`: format version, and every shard's size (`check_sizes`: one
        stat per shard) and sha256 (`verify`: every byte read)."""
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            what = "is not a directory" if data_dir.exists() else "does not exist"
            raise DataError(f"data directory {data_dir} {what}; run `python -m gpt4_lightning.prepare` to create it, "
                            "or point data.dir (train) / data_dir (evaluate) at a prepared directory")
        path = data_dir / MANIFEST
        if path.exists() and not path.is_file():
            raise DataError(f"{path} is not a regular file; re-run prepare with overwrite=true")
        if not path.is_file():
            raise DataError(f"{path} is missing: {data_dir} is not a prepared data directory (or prepare did not "
                            "finish); run `python -m gpt4_lightning.prepare` for it")
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{path} is not valid JSON ({e}); re-run prepare with overwrite=true") from e
        if not isinstance(raw, dict):
            raise DataError(f"{path} is not a manifest (a JSON object); re-run prepare with overwrite=true")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise DataError(f"{path} has format_version {version!r}, this gpt4_lightning reads version "
                            f"{FORMAT_VERSION}; re-run prepare with overwrite=true (or use the matching release)")
        try:
            raw["splits"] = {name: [Shard(**s) for s in shards] for name, shards in raw["splits"].items()}
            manifest = cls(**raw)
            if manifest.dtype not in ("uint16", "uint32"):
                raise TypeError(f"dtype {manifest.dtype!r} is not uint16 or uint32")
        except (KeyError, TypeError, AttributeError) as e:
            raise DataError(f"{path} is missing or has unexpected fields ({e}); re-run prepare with "
                            "overwrite=true") from e
        if check_sizes or verify:
            manifest.check_files(data_dir, verify)
        return manifest

    def check_files(self, data_dir: Path, verify: bool) -> None:
        itemsize = np.dtype(self.dtype).itemsize
        for shards in self.splits.values():
            for shard in shards:
                path = data_dir / shard.file
                if path.exists() and not path.is_file():
                    raise DataError(f"shard {path} listed in {data_dir / MANIFEST} is not a regular file (a "
                                    "directory?); re-run prepare with overwrite=true")
                if not path.is_file():
                    raise DataError(f"shard {path} listed in {data_dir / MANIFEST} is missing; re-run prepare "
                                    "with overwrite=true")
                size = path.stat().st_size
                if size != shard.tokens * itemsize:
                    raise DataError(f"shard {path} has {size} bytes but the manifest says {shard.tokens} tokens "
                                    f"({shard.tokens * itemsize} bytes): truncated or replaced; re-run prepare "
                                    "with overwrite=true")
                if verify and sha256_file(path) != shard.sha256:
                    raise DataError(f"shard {path} fails its sha256 check (corrupt); re-run prepare with "
                                    "overwrite=true")

    def memmaps(self, data_dir: Path, split: str) -> list[np.memmap]:
        """Read-only memory maps of a split's shards (nothing is read until indexed)."""
        return [np.memmap(Path(data_dir) / s.file, dtype=self.dtype, mode="r") for s in self.splits[split]
                if s.tokens > 0]


class ShardWriter:
    """Appends token arrays to `{split}_{i:05d}.bin` shards of at most `shard_tokens` tokens each,
    each written atomically with its sha256 computed on the way."""

    def __init__(self, data_dir: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.data_dir, self.split, self.dtype, self.shard_tokens = Path(data_dir), split, dtype, shard_tokens
        self.shards: list[Shard] = []
        self._pending: list[np.ndarray] = []
        self._pending_tokens = 0

    def add(self, tokens: np.ndarray) -> None:
        self._pending.append(np.asarray(tokens, dtype=self.dtype))
        self._pending_tokens += len(tokens)
        while self._pending_tokens >= self.shard_tokens:
            flat = np.concatenate(self._pending)
            self._write(flat[: self.shard_tokens])
            rest = flat[self.shard_tokens :]
            self._pending, self._pending_tokens = ([rest] if len(rest) else []), len(rest)

    def close(self) -> list[Shard]:
        if self._pending_tokens or not self.shards:
            self._write(np.concatenate(self._pending) if self._pending else np.zeros(0, self.dtype))
        self._pending, self._pending_tokens = [], 0
        return self.shards

    def _write(self, tokens: np.ndarray) -> None:
        name = f"{self.split}_{len(self.shards):05d}.bin"
        data = tokens.astype(self.dtype.newbyteorder("<"), copy=False).tobytes()
        with atomic_writer(self.data_dir / name) as f:
            f.write(data)
        self.shards.append(Shard(name, len(tokens), hashlib.sha256(data).hexdigest()))
