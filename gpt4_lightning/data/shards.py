"""On-disk token shards: raw token arrays (`np.memmap`-able) plus a JSON manifest.

Layout of a prepared data directory:

    manifest.json          written last, atomically: its presence means every shard is complete
    checksums.sha256       every shard's sha256 (`sha256sum -c` reads it), read only to verify
    tokenizer.json         the tokenizer the ids come from (copied or trained)
    train_00000.bin ...    raw little-endian token ids, documents separated by EOS; shard i of a split is
    val_00000.bin ...      `{split}_{i:05d}.bin` (more digits past 99 999)

The manifest lists each split's shard token counts as one array, so it stays small at a million shards
(format version 2; version 1, which listed every shard's name and sha256 in the JSON, is still read).

Every file is written under a temporary name in the same directory and renamed into place, so
a crash (even SIGKILL) never leaves a manifest that points at a partial shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpt4_lightning.utils.files import atomic_writer, sha256_file

MANIFEST = "manifest.json"
CHECKSUMS = "checksums.sha256"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
SPLITS = ("train", "val")
# the fix for a damaged prepared directory, and what it costs
REPREPARE = "re-run prepare with overwrite=true (it re-tokenizes the corpus into the directory, replacing it)"


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:05d}.bin"


class DataError(ValueError):
    """A data directory, shard or manifest that cannot be used; the message names the file and the fix."""


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id of the vocabulary."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


@dataclass(frozen=True)
class Shard:
    file: str
    tokens: int
    sha256: str


class SplitShards:
    """The shards of one split, compactly: shard i is `shard_name(split, i)` with `tokens[i]` tokens; the sha256s
    are held only when given (a manifest being written) or read from the checksums file when asked for."""

    def __init__(self, split: str, tokens: np.ndarray | list[int], sha256: list[str] | None = None,
                 checksums: Path | None = None) -> None:
        self.split, self.tokens = split, np.asarray(tokens, dtype=np.int64)
        self._sha256, self._checksums = sha256, checksums

    @classmethod
    def of(cls, split: str, shards: list[Shard]) -> SplitShards:
        for i, shard in enumerate(shards):
            if shard.file != shard_name(split, i):
                raise ValueError(f"shard {i} of split {split} is named {shard.file}, not {shard_name(split, i)}")
        return cls(split, [s.tokens for s in shards], [s.sha256 for s in shards])

    def __len__(self) -> int:
        return len(self.tokens)

    def file(self, index: int) -> str:
        return shard_name(self.split, index)

    @property
    def sha256(self) -> list[str]:
        if self._sha256 is None:
            self._sha256 = read_checksums(self._checksums, self.split, len(self)) if self._checksums else []
        return self._sha256

    def __getitem__(self, index: int) -> Shard:
        return Shard(self.file(index), int(self.tokens[index]), self.sha256[index])

    def __iter__(self) -> Iterator[Shard]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, SplitShards) and self.split == other.split
                and np.array_equal(self.tokens, other.tokens) and self.sha256 == other.sha256)


def run_lengths(values: np.ndarray) -> list[list[int]]:
    """[[value, repeat], ...]: a split's shards all hold `shard_tokens` tokens but the last, so a million shards
    take two pairs."""
    if len(values) == 0:
        return []
    starts = np.flatnonzero(np.diff(values)) + 1
    bounds = np.concatenate(([0], starts, [len(values)]))
    return [[int(values[a]), int(b - a)] for a, b in itertools.pairwise(bounds)]


def from_run_lengths(pairs: list[list[int]], count: int) -> np.ndarray:
    values = np.repeat([p[0] for p in pairs], [p[1] for p in pairs]).astype(np.int64)
    if len(values) != count:
        raise ValueError(f"the token counts describe {len(values)} shards, the manifest says {count}")
    return values


def read_checksums(path: Path, split: str, count: int) -> list[str]:
    """The sha256 of shards 0..count-1 of `split` from a `sha256sum`-format file."""
    found: dict[str, str] = {}
    with open(path) as f:
        for line in f:
            digest, _, name = line.rstrip("\n").partition("  ")
            if name.startswith(split + "_"):
                found[name] = digest
    try:
        return [found[shard_name(split, i)] for i in range(count)]
    except KeyError as e:
        raise DataError(f"{path} has no sha256 for shard {e.args[0]}; " + REPREPARE) from e


@dataclass
class Manifest:
    """What `prepare` wrote; `load` checks it before anything is read. `splits` maps a split to its shards
    (`SplitShards`; a list of `Shard` is accepted and converted)."""

    dtype: str
    vocab_size: int
    eos_id: int
    tokenizer_file: str
    tokenizer_sha256: str
    splits: dict[str, Any]
    source: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.splits = {name: shards if isinstance(shards, SplitShards) else SplitShards.of(name, list(shards))
                       for name, shards in self.splits.items()}

    def num_tokens(self, split: str) -> int:
        shards = self.splits.get(split)
        return int(shards.tokens.sum()) if shards is not None else 0

    def save(self, data_dir: Path) -> None:
        """`checksums.sha256`, then `manifest.json` (each atomically): the manifest's presence means both are
        complete."""
        data_dir = Path(data_dir)
        with atomic_writer(data_dir / CHECKSUMS, "w") as f:
            for shards in self.splits.values():
                for i, digest in enumerate(shards.sha256):
                    f.write(f"{digest}  {shards.file(i)}\n")
        payload = {k: v for k, v in dataclasses.asdict(self).items() if k != "splits"}
        payload.update(format_version=FORMAT_VERSION, checksums=CHECKSUMS,
                       splits={name: {"shards": len(shards), "tokens": run_lengths(shards.tokens)}
                               for name, shards in self.splits.items()})
        with atomic_writer(data_dir / MANIFEST, "w") as f:
            json.dump(payload, f, indent=1)

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
            raise DataError(f"{path} is not a regular file; " + REPREPARE)
        if not path.is_file():
            raise DataError(f"{path} is missing: {data_dir} is not a prepared data directory (or prepare did not "
                            "finish); run `python -m gpt4_lightning.prepare` for it")
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{path} is not valid JSON ({e}); " + REPREPARE) from e
        if not isinstance(raw, dict):
            raise DataError(f"{path} is not a manifest (a JSON object); " + REPREPARE)
        version = raw.get("format_version")
        if version not in READABLE_VERSIONS:
            raise DataError(f"{path} has format_version {version!r}, this gpt4_lightning reads versions "
                            f"{', '.join(map(str, READABLE_VERSIONS))}; re-run prepare with overwrite=true (or use "
                            "the matching release)")
        try:
            if version == 1:
                raw["splits"] = {name: [Shard(**s) for s in shards] for name, shards in raw["splits"].items()}
            else:
                checksums = data_dir / str(raw.pop("checksums"))
                raw["splits"] = {name: SplitShards(name, from_run_lengths(split["tokens"], split["shards"]),
                                                   checksums=checksums) for name, split in raw["splits"].items()}
            manifest = cls(**raw)
            if manifest.dtype not in ("uint16", "uint32"):
                raise TypeError(f"dtype {manifest.dtype!r} is not uint16 or uint32")
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise DataError(f"{path} is missing or has unexpected fields ({e}); re-run prepare with "
                            "overwrite=true") from e
        if check_sizes or verify:
            manifest.check_files(data_dir, verify)
        return manifest

    def check_files(self, data_dir: Path, verify: bool) -> None:
        """Every shard a regular file of the manifest's size (one `stat` by name relative to the directory:
        O(shards) system calls, no reads; bench/data_scale.py), and with `verify` of the manifest's sha256."""
        itemsize = np.dtype(self.dtype).itemsize
        directory = os.open(data_dir, os.O_RDONLY)
        try:
            for shards in self.splits.values():
                sizes = np.empty(len(shards), dtype=np.int64)
                for i in range(len(shards)):
                    try:
                        st = os.stat(shards.file(i), dir_fd=directory)
                    except FileNotFoundError:
                        raise DataError(f"shard {data_dir / shards.file(i)} listed in {data_dir / MANIFEST} is "
                                        "missing; " + REPREPARE) from None
                    sizes[i] = st.st_size if stat.S_ISREG(st.st_mode) else -1
                for i in np.flatnonzero(sizes != shards.tokens * itemsize)[:1].tolist():
                    path, tokens = data_dir / shards.file(i), int(shards.tokens[i])
                    if sizes[i] < 0:
                        raise DataError(f"shard {path} listed in {data_dir / MANIFEST} is not a regular file (a "
                                        "directory?); " + REPREPARE)
                    raise DataError(f"shard {path} has {sizes[i]} bytes but the manifest says {tokens} tokens "
                                    f"({tokens * itemsize} bytes): truncated or replaced; " + REPREPARE)
                if verify:
                    for i, digest in enumerate(shards.sha256):
                        if sha256_file(data_dir / shards.file(i)) != digest:
                            raise DataError(f"shard {data_dir / shards.file(i)} fails its sha256 check (corrupt); "
                                            + REPREPARE)
        finally:
            os.close(directory)

    def memmaps(self, data_dir: Path, split: str) -> list[np.memmap]:
        """Read-only memory maps of a split's shards (nothing is read until indexed)."""
        shards = self.splits[split]
        return [np.memmap(Path(data_dir) / shards.file(i), dtype=self.dtype, mode="r")
                for i, tokens in enumerate(shards.tokens.tolist()) if tokens > 0]


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
        name = shard_name(self.split, len(self.shards))
        data = tokens.astype(self.dtype.newbyteorder("<"), copy=False).tobytes()
        with atomic_writer(self.data_dir / name) as f:
            f.write(data)
        self.shards.append(Shard(name, len(tokens), hashlib.sha256(data).hexdigest()))
