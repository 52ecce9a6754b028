"""Checksums of every checkpoint file, computed while it is written, and the checks on load.

A checkpoint's manifest (`checksums.json` inside a sharded directory, `<name>.checksums.json` beside a `.ckpt`
file) lists each file's size and xxh3-128 digest. It is written after every file of the checkpoint is complete and
published with it (`atomic.AtomicCheckpoint`), so a checkpoint with a manifest is one whose files were all written;
a file whose bytes differ from it has been damaged since (a bad disk, a torn copy, a storage bug). torch does not
check the CRCs of a `.ckpt`'s zip records on load, and DCP keeps no checksums at all: without this a run resumes
from corrupt weights in silence.

Two depths of check: `verify(contents=False)` (stat only: every listed file there, of its size; what a truncated
file or a missing `.metadata` fails) before anything is built, and `verify()` (every byte hashed) once the ranks
are up, each rank hashing its own share of the files (`choose`).
"""

from __future__ import annotations

import io
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from gpt4_lightning.utils.files import atomic_writer

ALGORITHM = "xxh3_128"  # faster than the disks it guards, from the page cache too (BENCHMARKS.md)
MANIFEST = "checksums.json"  # inside a sharded checkpoint directory
SIDECAR_SUFFIX = ".checksums.json"  # beside a checkpoint file
FILE_ITSELF = "."  # a `.ckpt` file's entry in its own manifest (its name changes when it is published)
CHUNK = 1 << 22


def manifest_path(checkpoint: str | os.PathLike) -> Path:
    path = Path(checkpoint)
    return path / MANIFEST if path.is_dir() else path.with_name(path.name + SIDECAR_SUFFIX)


class HashingStream(io.RawIOBase):
    """A writable file that hashes every byte on its way to disk: the checksum costs no second read.
    `tell`/`fileno`/`flush` pass through (DCP asks for offsets and fsyncs)."""

    def __init__(self, raw: Any) -> None:
        super().__init__()
        self.raw, self.digest, self.size = raw, xxhash.xxh3_128(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.size += view.nbytes
        self.raw.write(view)
        return view.nbytes

    def tell(self) -> int:
        return self.raw.tell()

    def fileno(self) -> int:
        return self.raw.fileno()

    def flush(self) -> None:
        self.raw.flush()

    def entry(self) -> dict[str, Any]:
        return {"size": self.size, ALGORITHM: self.digest.hexdigest()}


class Digests:
    """The entries of the files one process wrote, by name relative to the checkpoint (thread-safe: DCP may
    write with several threads)."""

    def __init__(self) -> None:
        self._lock, self.entries = threading.Lock(), {}

    def add(self, name: str, entry: dict[str, Any]) -> None:
        with self._lock:
            self.entries[name] = entry

    def rename(self, old: str, new: str) -> None:
        with self._lock:
            self.entries[new] = self.entries.pop(old)


def save_hashed(obj: Any, path: Path) -> dict[str, Any]:
    """`torch.save(obj, path)` through a `HashingStream`, fsync'd; the file's manifest entry."""
    import torch

    with open(path, "wb") as raw:
        stream = HashingStream(raw)
        torch.save(obj, stream)
        raw.flush()
        os.fsync(raw.fileno())
    return stream.entry()


def write_manifest(checkpoint: Path, entries: dict[str, dict[str, Any]], step: int | None) -> None:
    """The manifest of `checkpoint` (its files all complete and fsync'd), written atomically."""
    with atomic_writer(manifest_path(checkpoint), "w") as f:
        json.dump({"algorithm": ALGORITHM, "step": step, "files": dict(sorted(entries.items()))}, f, indent=1)


def file_digest(path: Path) -> str:
    digest = xxhash.xxh3_128()
    with open(path, "rb", buffering=0) as f:
        buffer = bytearray(CHUNK)
        while n := f.readinto(buffer):
            digest.update(memoryview(buffer)[:n])
    return digest.hexdigest()


@dataclass(frozen=True)
class Verdict:
    """`problem`: what is wrong, in words (None: sound); `manifest`: False for a checkpoint written before
    checksums (nothing to verify against: loaded unverified)."""

    problem: str | None
    manifest: bool = True

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify(checkpoint: str | os.PathLike, contents: bool = True, rank: int = 0, world: int = 1) -> Verdict:
    """Check `checkpoint` against its manifest: every file there and of its size, and, with `contents`, the
    digests of this rank's share of the files (file i of the sorted list is hashed by rank i % world)."""
    path = Path(checkpoint).resolve()
    if not path.exists():
        return Verdict(f"{path} does not exist")
    manifest = manifest_path(path)
    if not manifest.is_file():
        return Verdict(None, manifest=False)
    try:
        files = json.loads(manifest.read_text())["files"]
        assert isinstance(files, dict) and files
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return Verdict(f"its manifest {manifest.name} is unreadable")
    for index, (name, entry) in enumerate(files.items()):
        file = path if name == FILE_ITSELF else path / name
        if not file.is_file():
            return Verdict(f"file {name} is missing")
        size = file.stat().st_size
        if size != entry["size"]:
            return Verdict(f"file {file.name} has {size} bytes, {entry['size']} were written (truncated or replaced)")
        if contents and index % world == rank and file_digest(file) != entry[ALGORITHM]:
            return Verdict(f"file {file.name} does not match its checksum (corrupt)")
    return Verdict(None)
