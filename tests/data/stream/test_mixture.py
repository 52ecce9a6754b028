"""data=mix in process: the weights hold, every source's epoch visits each of its windows once, the position
resumes exactly (with workers too) and is global across world sizes, each source has its own val loader.

Token ids are unique across sources (web train from 0, code train from 40 000; val splits from 30 000 and
60 000), so a window's first token names its source.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gpt4_lightning.data.shards import Manifest, ShardWriter
from gpt4_lightning.data.stream.datamodule import GPT4DataModule
from gpt4_lightning.data.stream.mixture import BLOCK, Mixture, Source, block_counts

SEQ, BATCH = 8, 10
WEB, CODE = 3000, 300  # windows; 3300 per mixture epoch, a multiple of BATCH: no epoch tail is skipped
CODE_START = 40_000


def write_source(root: Path, windows_per_shard: list[int], start: int, val_start: int, val_windows: int = 4) -> Path:
    root.mkdir(parents=True)
    splits = {}
    for split, sizes, first in (("train", windows_per_shard, start), ("val", [val_windows], val_start)):
        shards = []
        for windows in sizes:
            writer = ShardWriter(root, split, np.dtype(np.uint16), windows * SEQ + 1)
            writer.shards = list(shards)  # continue the numbering
            writer.add(np.arange(first, first + windows * SEQ + 1))
            shards = writer.close()
            first += windows * SEQ + 1
        splits[split] = shards
    Manifest("uint16", 65_536, 0, "tokenizer.json", "same-tokenizer", splits).save(root)
    return root


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Source]:
    root = tmp_path_factory.mktemp("mix")
    return [Source("web", write_source(root / "web", [1000, 1000, 1000], 0, 30_000), 0.75),
            Source("code", write_source(root / "code", [CODE], CODE_START, 60_000), 0.25)]


def mix(sources: list[Source], batch: int = BATCH, seed: int = 7, workers: int = 0) -> GPT4DataModule:
    dm = GPT4DataModule(None, seq_len=SEQ, batch_size=batch, seed=seed, num_workers=workers, sources=sources)
    dm.setup()
    return dm


def batches(loader, n: int) -> list[list[int]]:
    """First tokens of the next `n` batches, across epochs (each epoch is a new iterator, as Lightning makes)."""
    out: list[list[int]] = []
    while len(out) < n:
        out += [b[:, 0].tolist() for _, b in zip(range(n - len(out)), loader, strict=False)]  # range first: no extra
    return out


def test_block_counts_sum_to_the_block_and_follow_the_weights():
    assert block_counts(np.array([0.75, 0.25])).tolist() == [3072, 1024]
    for weights in ([1, 1, 1], [0.5, 0.3, 0.2], [1, 1e-9], [3, 1, 1, 1]):
        counts = block_counts(np.array(weights, dtype=float))
        assert counts.sum() == BLOCK and counts.min() >= 1
        assert np.abs(counts - np.array(weights) / sum(weights) * BLOCK).max() <= 1


def test_shares_hold_and_a_small_source_repeats_each_window_once_per_epoch(sources):
    """10 000 windows (3 mixture epochs; code repeats 8 times): shares within 1 % of 0.75/0.25, every code epoch a
    permutation of its 300 windows, in a new order each time, and the logged progress counts what was read."""
    dm = mix(sources)
    loader = dm.make_train_loader()
    read = [t for batch in batches(loader, 1000) for t in batch]
    is_code = np.array(read) >= CODE_START
    assert abs(is_code.mean() - 0.25) < 0.01 and len(read) == 10_000
    code = [t for t in read if t >= CODE_START]
    code_windows = sorted(CODE_START + i * SEQ for i in range(CODE))
    epochs = [code[i : i + CODE] for i in range(0, len(code) - CODE + 1, CODE)]
    assert len(epochs) >= 8 and all(sorted(e) == code_windows for e in epochs)
    assert len({tuple(e) for e in epochs}) == len(epochs)  # each epoch its own order
    progress = {name: (windows, epoch) for name, windows, epoch in dm.source_progress()}
    assert progress == {"web": (int((~is_code).sum()), int((~is_code).sum()) // WEB),
                        "code": (len(code), len(code) // CODE)}


def test_labels_are_a_function_of_the_position_alone():
    mixture = Mixture(["a", "b", "c"], [0.5, 0.3, 0.2], [100, 50, 7], seed=1)
    g = np.arange(3 * BLOCK + 123)
    whole = mixture(g)
    pieces = np.concatenate([mixture(g[i : i + 1000]) for i in range(0, len(g), 1000)])
    assert np.array_equal(whole, pieces)
    assert np.array_equal(mixture(g[::-1]), whole[::-1])
    assert not np.array_equal(whole, Mixture(["a", "b", "c"], [0.5, 0.3, 0.2], [100, 50, 7], seed=2)(g))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_continues_the_stream_exactly(sources, workers):
    want = batches(mix(sources).make_train_loader(), 60)
    first = mix(sources, workers=workers)
    got = batches(first.make_train_loader(), 37)
    resumed = mix(sources, workers=workers)
    resumed.load_state_dict(first.state_dict())
    assert got + batches(resumed.make_train_loader(), 23) == want


def test_two_ranks_then_one_rank_continue_the_same_global_stream(sources):
    reference = batches(mix(sources).make_train_loader(), 12)  # one rank, the global batch of 10
    ranks = [mix(sources, batch=BATCH // 2) for _ in range(2)]
    its = [iter(dm.make_train_loader(2, r)) for r, dm in enumerate(ranks)]
    two = [next(its[0])[:, 0].tolist() + next(its[1])[:, 0].tolist() for _ in range(7)]
    single = mix(sources)
    single.load_state_dict(ranks[0].state_dict())
    assert two + batches(single.make_train_loader(), 5) == reference


def test_each_source_has_its_val_loader(sources):
    dm = mix(sources)
    assert [(name, weight) for name, weight, _ in dm.val_sources] == [("web", 0.75), ("code", 0.25)]
    loaders = dm.make_val_loader()
    firsts = [[t for batch in loader for t in batch[:, 0].tolist()] for loader in loaders]
    assert firsts == [[30_000 + i * SEQ for i in range(4)], [60_000 + i * SEQ for i in range(4)]]


def test_a_changed_mixture_resumes_with_a_warning(sources, caplog):
    dm = mix(sources)
    batches(dm.make_train_loader(), 3)
    other = mix([sources[0], Source("code", sources[1].dir, 0.5)])
    other.load_state_dict(dm.state_dict())
    with caplog.at_level("WARNING"):
        other.make_train_loader()
    assert "data mixture was" in caplog.text and "['code', 0.25, 300]" in caplog.text
