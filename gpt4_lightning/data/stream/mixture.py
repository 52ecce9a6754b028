"""A weighted mixture of prepared directories, drawn as one stream with the single-source loader's guarantees.

The train stream is a sequence of positions g = 0, 1, 2, ... (global: all ranks, as `consumed` is). Which
source position g draws from, and which of that source's windows, is a stateless function of g:

- Labels. The stream is cut into blocks of `BLOCK` positions; each block holds every source s exactly
  `counts[s]` times (the weights times `BLOCK`, rounded by largest remainder), in the order of a seeded
  permutation of that multiset (`Permutation(BLOCK, seed, block, "mix")`). Any `BLOCK` consecutive positions
  hold each source within ±counts[s] of its share, so the shares hold at every scale.
- Draws. Position g is source s's draw number j = (g // BLOCK) * counts[s] + (how many of the block's earlier
  positions are s); that source's epoch is j // N_s (N_s its windows) and its window the position j % N_s of
  its own `Permutation(N_s, seed, epoch, name)`. A source smaller than its share repeats, its epochs advancing
  on their own, each epoch visiting each of its windows once.

So the exact mid-epoch resume and the world-size-independent position carry over unchanged: the loader's state is
still (epoch, consumed); a mixture "epoch" is M = sum(N_s) stream positions (stream position epoch * M +
consumed), its tail of fewer than one global batch skipped as a single source's is. Everything reads through one
`Windows.concat` of the sources (source s's window i is window offsets[s] + i there).

Sources repeat rather than run out: a capped source would change every later label, and the usual intent (a
small high-quality source up-weighted for a few epochs) is expressed by its weight; `data/<name>/epoch` is
logged so the repetition is visible.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from gpt4_lightning.data.config import check_sources
from gpt4_lightning.data.shards import MANIFEST, DataError, Manifest
from gpt4_lightning.data.stream.permutation import Permutation, Permutations
from gpt4_lightning.data.stream.windows import Windows

log = logging.getLogger(__name__)

BLOCK = 4096  # stream positions per label block: weights resolve to 1/4096


@dataclass(frozen=True)
class Source:
    """One source of a mixture: a prepared directory, its name (in logs and metrics) and its weight (> 0)."""

    name: str
    dir: Path
    weight: float


def block_counts(weights: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """Each source's draws per block: `weights` (normalised) times `block`, rounded by largest remainder,
    at least 1 each (a source with a weight above 0 is drawn)."""
    exact = weights / weights.sum() * block
    counts = np.maximum(np.floor(exact).astype(np.int64), 1)
    while counts.sum() < block:
        counts[np.argmax(exact - counts)] += 1
    while counts.sum() > block:
        counts[np.argmax(np.where(counts > 1, counts - exact, -np.inf))] -= 1
    return counts


class Mixture:
    """The labels and draws of the stream for sources of `sizes` windows each (see the module docstring)."""

    def __init__(self, names: list[str], weights: list[float], sizes: list[int], seed: int) -> None:
        self.names, self.seed = list(names), seed
        self.weights = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.counts = block_counts(self.weights)
        self.offsets = np.concatenate(([0], np.cumsum(self.sizes)[:-1])).astype(np.int64)
        self._template = np.repeat(np.arange(len(names)), self.counts)
        self._label_starts = np.concatenate(([0], np.cumsum(self.counts)[:-1]))
        self.block = lru_cache(maxsize=16)(self._block)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "block"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.block = lru_cache(maxsize=16)(self._block)

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Block `b`'s labels (BLOCK,) and each position's rank among the block's positions of its label."""
        labels = self._template[Permutation(BLOCK, self.seed, b, stream="mix")(np.arange(BLOCK))]
        order = np.argsort(labels, kind="stable")
        ranks = np.empty(BLOCK, dtype=np.int64)
        ranks[order] = np.arange(BLOCK) - self._label_starts[labels[order]]
        return labels, ranks

    def sources(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stream positions `g` (n,) -> (source of each, its draw number in that source)."""
        g = np.asarray(g, dtype=np.int64)
        blocks, offsets = np.divmod(g, BLOCK)
        source, draw = np.empty_like(g), np.empty_like(g)
        for b in np.unique(blocks).tolist():
            mask = blocks == b
            labels, ranks = self.block(b)
            source[mask] = labels[offsets[mask]]
            draw[mask] = b * self.counts[source[mask]] + ranks[offsets[mask]]
        return source, draw

    def __call__(self, g: np.ndarray) -> np.ndarray:
        """Stream positions `g` (n,) -> window ids in the concatenated reader (n,)."""
        source, draw = self.sources(g)
        epoch, position = np.divmod(draw, self.sizes[source])
        # one permutation per (source, epoch) group; `first`: an element of each group
        _, first, which = np.unique(source * (int(epoch.max(initial=0)) + 1) + epoch, return_index=True,
                                    return_inverse=True)
        perms = Permutations([self._source_order(int(source[i]), int(epoch[i])) for i in first.tolist()])
        return self.offsets[source] + perms(which, position)

    def _source_order(self, s: int, epoch: int) -> Permutation:
        """Source `s`'s order in its epoch `epoch` (its own stream of orders, keyed by its name)."""
        return Permutation(int(self.sizes[s]), self.seed, epoch, self.names[s])

    def drawn(self, g: int) -> np.ndarray:
        """Windows each source has drawn in stream positions [0, g) (S,)."""
        b, o = divmod(int(g), BLOCK)
        labels, _ = self.block(b)
        return b * self.counts + np.bincount(labels[:o], minlength=len(self.names))


def load_sources(sources: list[Source], seq_len: int, max_token_id: int | None, verify: bool,
                 check_sizes: bool) -> tuple[list[Manifest], list[Windows], list[Windows | None]]:
    """Each source's manifest and train/val readers, after the checks a mixture needs (one `DataError` line
    each): names unique, weights > 0, one tokenizer for all (sha256 and vocab), vocab within the model, and
    `seq_len` fitting every source's train split."""
    check_sources([s.name for s in sources], [s.weight for s in sources])
    manifests = []
    for s in sources:
        try:
            manifests.append(Manifest.load(s.dir, verify=verify, check_sizes=check_sizes))
        except DataError as e:
            raise DataError(f"data.sources {s.name!r}: {e}") from e
    first, ref = sources[0], manifests[0]
    for s, m in zip(sources[1:], manifests[1:], strict=True):
        if (m.tokenizer_sha256, m.vocab_size, m.dtype) != (ref.tokenizer_sha256, ref.vocab_size, ref.dtype):
            raise DataError(f"data.sources {first.name!r} ({first.dir}) and {s.name!r} ({s.dir}) were prepared with "
                            f"different tokenizers (sha256 {ref.tokenizer_sha256[:12]}… vocab {ref.vocab_size} vs "
                            f"{m.tokenizer_sha256[:12]}… vocab {m.vocab_size}); prepare every source with one "
                            "tokenizer (tokenizer=file tokenizer.path=<the first's tokenizer.json>)")
    if max_token_id is not None and ref.vocab_size > max_token_id:
        raise DataError(f"vocab of the data.sources is {ref.vocab_size} but the model has num_tokens={max_token_id}; "
                        f"set model.num_tokens >= {ref.vocab_size}")
    train, val = [], []
    for s, m in zip(sources, manifests, strict=True):
        t = Windows(s.dir, m, "train", seq_len)
        if t.num_windows == 0:
            raise DataError(f"seq_len={seq_len} needs {seq_len + 1} tokens in one shard but split 'train' of source "
                            f"{s.name!r} ({s.dir / MANIFEST}) has {t.max_shard_tokens} in its largest shard; lower "
                            "data.seq_len, or prepare that source with more text")
        v = Windows(s.dir, m, "val", seq_len)
        train.append(t)
        val.append(v if v.num_windows else None)
    return manifests, train, val
