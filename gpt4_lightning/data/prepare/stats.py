"""Statistics of prepared token data read from a bounded sample, never the whole corpus.

`unigram_entropy` is the loss of a model that knows only token frequencies: a trained model's loss should be well
below it, so it is the reference line of a run's loss plot (`reporting`). At 1e13 tokens in 1e6 shards it reads
`max_tokens` tokens from at most `max_shards` shards spread evenly over the split (a few MB, well under a second).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gpt4_lightning.data.shards import Manifest

SAMPLE_TOKENS = 1 << 23
SAMPLE_SHARDS = 64


def token_counts(data_dir: str | Path, manifest: Manifest, split: str = "train", max_tokens: int = SAMPLE_TOKENS,
                 max_shards: int = SAMPLE_SHARDS) -> np.ndarray:
    """Counts of each token id, shape `(vocab_size,)`, over a contiguous slice at the start of each of up to
    `max_shards` evenly spaced non-empty shards of `split` (together at most `max_tokens` tokens)."""
    shards = manifest.splits[split]
    non_empty = np.flatnonzero(shards.tokens > 0)
    counts = np.zeros(manifest.vocab_size, dtype=np.int64)
    if len(non_empty) == 0:
        return counts
    picked = non_empty[np.linspace(0, len(non_empty) - 1, min(max_shards, len(non_empty))).round().astype(int)]
    per_shard = max(1, max_tokens // len(picked))
    for index in np.unique(picked).tolist():
        n = min(per_shard, int(shards.tokens[index]))
        tokens = np.fromfile(Path(data_dir) / shards.file(index), dtype=manifest.dtype, count=n)
        counts += np.bincount(tokens, minlength=manifest.vocab_size)[: manifest.vocab_size]
    return counts


def entropy(counts: np.ndarray) -> float:
    """Shannon entropy in nats of the distribution `counts / counts.sum()`."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def unigram_entropy(dirs_and_weights: list[tuple[str | Path, float]], split: str = "train") -> float | None:
    """Entropy (nats/token) of the token distribution the model trains on: one prepared directory's, or a
    mixture's (each source's frequencies weighted by its share). None if the sample holds no tokens."""
    shares = []
    for data_dir, weight in dirs_and_weights:
        counts = token_counts(data_dir, Manifest.load(data_dir, check_sizes=False), split)
        if counts.sum() > 0:
            shares.append(counts / counts.sum() * weight)
    if not shares:
        return None
    mixed = np.zeros(max(len(s) for s in shares))  # a mixture's sources share one tokenizer: equal lengths
    for share in shares:
        mixed[: len(share)] += share
    return entropy(mixed)
