"""`Windows`: one split's fixed-length token windows, read from its shard files with bounded file handles.

A split's shards are cut into windows of `seq_len + 1` tokens at stride `seq_len` (a window never crosses a
shard); window ids count across the shards in order. A mixture reads all its sources through one
`Windows.concat`.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from gpt4_lightning.data.shards import REPREPARE, DataError, Manifest, SplitShards, shard_name

MAX_OPEN_SHARDS = 64  # per process (each DataLoader worker, each rank): any shard count fits `ulimit -n 1024`


class Windows:
    """The `seq_len + 1`-token windows of one split, read with positional reads (`os.preadv`) from shard
    files opened lazily in the process (or DataLoader worker) that reads them, at most `MAX_OPEN_SHARDS` at a
    time (the longest open closed first); pickling drops the handles. A shard's size is checked against the
    manifest when it is opened.

    Why not `np.memmap` slicing: pages read through a map stay mapped into the process and count in its
    RSS (a pass over 1.1 GiB of shards left 1.1 GiB resident), and each random window costs page faults
    that map whole page-cache folios. This reader keeps RSS flat (the page cache stays the kernel's, shared by
    all workers and ranks) and is faster than a memmap reader (bench/data_throughput.py, BENCHMARKS.md).
    """

    def __init__(self, data_dir: str | Path, manifest: Manifest, split: str, seq_len: int) -> None:
        self.data_dir, self.split, self.seq_len = Path(data_dir), split, seq_len
        shards = manifest.splits.get(split) or SplitShards(split, [])
        self.shard_index = np.flatnonzero(shards.tokens > 0)  # empty shards hold no window
        self.dirs, self.shard_dir = [self.data_dir], np.zeros(len(self.shard_index), dtype=np.int32)
        self.dtype = np.dtype(manifest.dtype).newbyteorder("<")  # shards are little-endian
        tokens = shards.tokens[self.shard_index]
        self.shard_bytes = tokens * self.dtype.itemsize
        per_shard = np.where(tokens > seq_len, (tokens - 1) // seq_len, 0)
        # window i lives in shard searchsorted(starts, i, "right") - 1, at local index i - starts[shard]
        self.starts = np.concatenate(([0], np.cumsum(per_shard))).astype(np.int64)
        self.num_windows = int(self.starts[-1])
        self.max_shard_tokens = int(tokens.max()) if len(tokens) else 0
        self.total_tokens = int(tokens.sum())
        self._files: dict[int, io.FileIO] = {}
        self.max_open = MAX_OPEN_SHARDS

    @classmethod
    def concat(cls, parts: list[Windows]) -> Windows:
        """One reader over the windows of `parts` (same dtype and seq_len), part after part: part k's window i
        is window `offsets[k] + i` here. A mixture reads all its sources through one of these, so a batch drawn
        from several sources costs what a batch of one does."""
        first = parts[0]
        joined = cls.__new__(cls)
        joined.data_dir, joined.split, joined.seq_len = first.data_dir, first.split, first.seq_len
        joined.dtype = first.dtype
        joined.dirs = [d for part in parts for d in part.dirs]
        dir_offsets = np.cumsum([0] + [len(part.dirs) for part in parts[:-1]])
        joined.shard_dir = np.concatenate([part.shard_dir + off for part, off in zip(parts, dir_offsets, strict=True)])
        joined.shard_index = np.concatenate([part.shard_index for part in parts])
        joined.shard_bytes = np.concatenate([part.shard_bytes for part in parts])
        offsets = np.cumsum([0] + [part.num_windows for part in parts[:-1]])
        joined.starts = np.concatenate([*(part.starts[:-1] + off for part, off in zip(parts, offsets, strict=True)),
                                        [sum(part.num_windows for part in parts)]]).astype(np.int64)
        joined.num_windows = int(joined.starts[-1])
        joined.max_shard_tokens = max(part.max_shard_tokens for part in parts)
        joined.total_tokens = sum(part.total_tokens for part in parts)
        joined._files, joined.max_open = {}, first.max_open
        return joined

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": {}}

    def _open(self, shard: int) -> io.FileIO:
        """Open `shard`, closing the longest-open file first when `max_open` are open (FIFO: under random window
        order it evicts as well as LRU does, and a hit costs one dict lookup, nothing to reorder)."""
        while len(self._files) >= self.max_open:
            self._files.pop(next(iter(self._files))).close()
        path = self.path(shard)
        f = io.FileIO(path, "r")
        size = os.fstat(f.fileno()).st_size
        if size != self.shard_bytes[shard]:
            f.close()
            raise DataError(f"shard {path} has {size} bytes but its manifest says {self.shard_bytes[shard]}: "
                            "truncated or replaced after prepare; " + REPREPARE)
        self._files[shard] = f
        return f

    def path(self, shard: int) -> Path:
        """The file of the `shard`-th non-empty shard (names are not kept: a million would cost ~100 MiB)."""
        return self.dirs[self.shard_dir[shard]] / shard_name(self.split, int(self.shard_index[shard]))

    def close(self) -> None:
        while self._files:
            self._files.popitem()[1].close()

    def read(self, ids: np.ndarray) -> np.ndarray:
        """Windows `ids` (n,) -> int64 array (n, seq_len + 1), reading only those windows' bytes."""
        shard = np.searchsorted(self.starts, ids, side="right") - 1
        offsets = (ids - self.starts[shard]) * (self.seq_len * self.dtype.itemsize)
        buf = np.empty((len(ids), self.seq_len + 1), dtype=self.dtype)
        files, nbytes = self._files, buf.itemsize * buf.shape[1]
        for row, s, offset in zip(buf, shard.tolist(), offsets.tolist(), strict=True):
            f = files.get(s) or self._open(s)
            got = os.preadv(f.fileno(), [row], offset) if _HAS_PREADV else _seek_read(f, row, offset)
            if got != nbytes:
                raise DataError(f"shard {self.path(s)} ended at byte {offset + got}, inside a window its manifest "
                                "promised: truncated or replaced after setup; " + REPREPARE)
        return buf.astype(np.int64)


def _seek_read(f: io.FileIO, row: np.ndarray, offset: int) -> int:
    f.seek(offset)  # no preadv (macOS before 11, Windows): each process owns its handles, so seek + read is safe
    return f.readinto(row)


_HAS_PREADV = hasattr(os, "preadv")
