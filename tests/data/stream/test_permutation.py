"""The O(1) shuffle (data/stream/permutation.py): a bijection of [0, n) for every n and seed, and as good a shuffle as
numpy's (statistics against numpy's permutation); in process."""

import numpy as np
import pytest

from gpt4_lightning.data.stream.permutation import Permutation, Permutations, network

SIZES = [1, 2, 3, 4, 5, 7, 8, 13, 16, 31, 64, 97, 1024, 65_537, 1_000_003]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("seed", [0, 1234])
def test_is_a_bijection(n, seed):
    out = Permutation(n, seed, epoch=3)(np.arange(n))
    assert out.dtype == np.int64 and out.shape == (n,)
    assert np.array_equal(np.sort(out), np.arange(n))


def test_same_positions_give_the_same_ids_in_any_grouping():
    """Workers and ranks ask for positions in pieces: the ids depend only on the position."""
    perm = Permutation(10_007, seed=9, epoch=1)
    whole = perm(np.arange(10_007))
    pieces = np.concatenate([perm(np.arange(i, min(i + 37, 10_007))) for i in range(0, 10_007, 37)])
    assert np.array_equal(whole, pieces)
    assert np.array_equal(perm(np.array([5, 3, 5])), whole[[5, 3, 5]])


def test_seed_and_epoch_change_the_order():
    base = Permutation(1000, 1, 0)(np.arange(1000))
    assert not np.array_equal(base, Permutation(1000, 2, 0)(np.arange(1000)))
    assert not np.array_equal(base, Permutation(1000, 1, 1)(np.arange(1000)))
    assert np.array_equal(base, Permutation(1000, 1, 0)(np.arange(1000)))  # reproducible


def test_the_order_is_the_one_checkpoints_were_written_with():
    """A checkpoint's data position means "this far into this order": the ids must not change between versions
    (these are the ids of the first implementation, before its numpy and scalar paths were optimised)."""
    assert Permutation(1_000_003, 7, 2)(np.arange(8)).tolist() == [13003, 721415, 681706, 549230, 113856, 381805,
                                                                   871568, 52200]
    assert Permutation(13, 7, 2)(np.arange(13)).tolist() == [8, 0, 7, 5, 1, 2, 12, 9, 3, 4, 11, 6, 10]


def test_the_scalar_tail_computes_the_same_network():
    perm = Permutation(1_000_003, 3, 1)
    x = np.random.default_rng(0).integers(0, 1 << (2 * perm.half), 1000, dtype=np.uint64)
    vectorised = network(x.copy(), np.uint64(perm.half), np.uint64(perm._mask), perm._np_keys)
    assert vectorised.tolist() == [perm._network_int(int(v)) for v in x]


def test_several_permutations_in_one_pass_are_each_one_alone():
    """A mixture maps each source's positions by its own permutation, all in one call."""
    perms = [Permutation(n, 5, epoch, stream) for n, epoch, stream in ((1, 0, "a"), (97, 2, "b"), (65_537, 1, "c"),
                                                                      (1000, 0, ""))]
    rng = np.random.default_rng(1)
    which = rng.integers(0, len(perms), 5000)
    ids = np.array([rng.integers(0, perms[w].n) for w in which])
    together = Permutations(perms)(which, ids)
    alone = np.empty_like(together)
    for w, perm in enumerate(perms):
        alone[which == w] = perm(ids[which == w])
    assert np.array_equal(together, alone)


def test_positions_outside_the_domain_are_refused():
    with pytest.raises(IndexError):
        Permutation(10, 0)(np.array([10]))


def serial_correlation(x: np.ndarray) -> float:
    x = x.astype(float)
    return float(np.corrcoef(x[:-1], x[1:])[0, 1])


@pytest.mark.parametrize("n", [1_000, 65_536, 1_000_003])
def test_shuffles_as_well_as_numpy(n):
    """Consecutive ids are uncorrelated (|r| within the spread of numpy's permutations for the same n: ~1/sqrt(n)
    per draw, so 5/sqrt(n) bounds both), and the identity-like failure modes of a weak mix are absent: few fixed
    points (a random permutation has ~1) and no long runs of consecutive ids."""
    bound = 5 / np.sqrt(n)
    ours = [Permutation(n, seed)(np.arange(n)) for seed in range(4)]
    theirs = [np.random.default_rng(seed).permutation(n) for seed in range(4)]
    assert max(abs(serial_correlation(p)) for p in theirs) < bound  # the statistic's spread, checked on numpy
    assert max(abs(serial_correlation(p)) for p in ours) < bound
    for p in ours:
        assert np.count_nonzero(p == np.arange(n)) <= 8
        assert np.count_nonzero(np.diff(p) == 1) < 8  # consecutive pairs: ~1 expected


def test_each_rank_gets_its_share_of_every_shard():
    """8 ranks each take a contiguous slice of the positions; each slice holds about 1/8 of every 'shard' (block
    of 1000 ids), as a uniform shuffle gives (binomial spread: sd ~ 9.4 of mean 125; 6 sd allowed)."""
    n, ranks, block = 64_000, 8, 1000
    ids = Permutation(n, 11)(np.arange(n)).reshape(ranks, -1)
    counts = np.stack([np.bincount(r // block, minlength=n // block) for r in ids])
    assert counts.sum() == n and abs(counts - block / ranks).max() < 6 * np.sqrt(block / ranks * (1 - 1 / ranks))
