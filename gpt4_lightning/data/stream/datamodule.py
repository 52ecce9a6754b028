"""Streaming, exactly resumable training data: fixed-length token windows read from the shards.

A split's shards (see `shards.py`) are cut into windows of `seq_len + 1` tokens at stride `seq_len`
(each window's last token is the next window's first, so every token is a target once); a window never
crosses a shard. Batches are int64 tensors `(batch, seq_len + 1)`: the model's loss shifts inputs and
targets itself.

Train order. Epoch `e` visits the windows in the order of `Permutation(num_windows, seed, e)`, a seeded
bijection computed per position (`permutation.py`: O(1) memory, never an array of all windows); global step `s`
consumes positions [s*B*W : (s+1)*B*W] (B = per-rank batch size, W = world size) and rank `r` takes its slice
[r*B : (r+1)*B] of that. Ranks are disjoint with equal length; the tail of fewer than B*W windows is dropped,
so every window of the truncated permutation is seen exactly once per epoch.

Position. The loader's state is `(epoch, consumed)`, `consumed` counting windows consumed by *all* ranks
in this epoch (a multiple of B*W while W is fixed). It counts batches handed to the training loop in the
main process — never batches that DataLoader workers or Lightning's fetcher merely produced ahead — so a
checkpoint taken at any step resumes at exactly the next batch. Because the count is global, resuming on a
different world size (or batch size) lands at the same point of the same permutation: the next step
starts at permutation[consumed], so no window is seen twice or skipped.

Lightning. `GPT4DataModule.train_dataloader()` returns a `ResumableLoader` whose `state_dict()` /
`load_state_dict()` Lightning stores in the checkpoint (fit loop, "combined_loader") and reloads when the
fit loop restarts. Lightning reloads loader states only when it considers the fit loop "restarting"
(always under `max_steps`; with `max_epochs`, not for a checkpoint taken at an epoch end), so the
DataModule also saves the same position through its own `state_dict()`, which Lightning restores on
every resume, and hands it to the loaders it builds. Lightning calls `set_epoch` only on samplers (an
IterableDataset's loader has none): the loader counts epochs itself, advancing when it hands out the
last batch of an epoch, and a new iterator (Lightning creates one per epoch) continues from the position.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from gpt4_lightning.data.shards import MANIFEST, DataError, Manifest
from gpt4_lightning.data.stream.mixture import Mixture, Source
from gpt4_lightning.data.stream.opened import OpenedData, open_data
from gpt4_lightning.data.stream.permutation import Permutation
from gpt4_lightning.data.stream.windows import Windows

log = logging.getLogger(__name__)

STATE_VERSION = 2  # 1: the order was a materialised numpy permutation
IDS_PER_CHUNK = 16384  # train positions mapped to window ids ~this many at a time (one vectorised call, 128 KiB)


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class TrainBatches(IterableDataset):
    """This rank's shuffled train batches (whole batches: use with `batch_size=None`), from the position
    `(epoch, consumed)` set by its loader before each iteration.

    Worker w of n yields this rank's remaining batches w, w + n, ...; the DataLoader's in-order round robin
    over workers restores the sequence, so the order does not depend on `num_workers`.
    """

    def __init__(self, windows: Windows, batch_size: int, seed: int, world_size: int = 1, rank: int = 0) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is not in [0, world_size={world_size})")
        self.windows, self.batch_size, self.seed = windows, batch_size, seed
        self.world_size, self.rank = world_size, rank
        self.epoch, self.consumed = 0, 0

    @property
    def step_windows(self) -> int:
        """Windows consumed by one global step (all ranks)."""
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        """Batches per rank in a whole epoch (Lightning counts a resumed epoch's batches against this)."""
        return self.windows.num_windows // self.step_windows

    def permutation(self, epoch: int) -> Callable[[np.ndarray], np.ndarray]:
        """Epoch `epoch`'s order: positions -> window ids."""
        return Permutation(self.windows.num_windows, self.seed, epoch)

    def identity(self) -> dict[str, Any]:
        """What else the position depends on, saved with it (a mixture's sources)."""
        return {}

    def __iter__(self) -> Iterator[torch.Tensor]:
        worker, num_workers = _worker()
        step, consumed, batch = self.step_windows, self.consumed, self.batch_size
        order = self.permutation(self.epoch)
        mine = range(worker, (self.windows.num_windows - consumed) // step, num_workers)  # this worker's steps
        chunk = max(1, IDS_PER_CHUNK // batch)  # steps
        for start in range(0, len(mine), chunk):
            steps = np.array(mine[start : start + chunk], dtype=np.int64)
            firsts = consumed + steps * step + self.rank * batch
            ids = order((firsts[:, None] + np.arange(batch)).ravel()).reshape(len(steps), batch)
            for row in ids:
                yield torch.from_numpy(self.windows.read(row))


class MixBatches(TrainBatches):
    """`TrainBatches` over a mixture: epoch e's position p is stream position e * M + p."""

    def __init__(self, windows: Windows, mixture: Mixture, batch_size: int, seed: int, world_size: int = 1,
                 rank: int = 0) -> None:
        super().__init__(windows, batch_size, seed, world_size, rank)
        self.mixture = mixture

    def permutation(self, epoch: int) -> Callable[[np.ndarray], np.ndarray]:
        if self.mixture.seed != self.seed:  # a resume took the checkpoint's seed
            self.mixture = Mixture(self.mixture.names, list(self.mixture.weights), list(self.mixture.sizes), self.seed)
        start, mixture = epoch * self.windows.num_windows, self.mixture
        return lambda positions: mixture(start + np.asarray(positions, dtype=np.int64))

    def identity(self) -> dict[str, Any]:
        return {"sources": [[n, float(w), int(s)] for n, w, s in zip(self.mixture.names, self.mixture.weights,
                                                                      self.mixture.sizes, strict=True)]}


class ResumableLoader(DataLoader):
    """The train DataLoader, stateful: `state_dict()` is the position after the last batch handed out by
    an iterator in this process; `load_state_dict()` makes the next iterator start exactly there.

    Iterating starts lazily (at the first `next`), from the position at that moment; handing out the
    last batch of an epoch moves the position to the start of the next epoch, so `for batch in loader`
    twice runs two epochs with different orders. Creating a new iterator supersedes an older one.

    Not torchdata's `StatefulDataLoader` (which Lightning also checkpoints): its state is each worker's iterator
    state for this rank and this `num_workers`, so it cannot resume on another world size or worker count; ours is
    the global position in the seeded stream, the same number whatever the layout.
    """

    def __init__(self, dataset: TrainBatches, num_workers: int = 0) -> None:
        super().__init__(dataset, batch_size=None, num_workers=num_workers)
        self.epoch, self.consumed = 0, 0
        self._active: object | None = None

    def __iter__(self) -> Iterator[torch.Tensor]:  # type: ignore[override]
        return self._batches()

    def _batches(self) -> Iterator[torch.Tensor]:
        token = self._active = object()
        ds: TrainBatches = self.dataset  # type: ignore[assignment]
        ds.epoch, ds.consumed = self.epoch, self.consumed  # before the workers start (they copy the dataset)
        log.debug("train loader: epoch %d from window %d of %d", self.epoch, self.consumed, ds.windows.num_windows)
        for batch in super().__iter__():
            if self._active is not token:
                return
            consumed = self.consumed + ds.step_windows
            if ds.windows.num_windows - consumed < ds.step_windows:  # that was the epoch's last batch
                self.epoch, self.consumed = self.epoch + 1, 0
            else:
                self.consumed = consumed
            yield batch

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` from its beginning, unless the position is already in it (for plain loops
        that call it each epoch; Lightning calls `set_epoch` only on samplers, this loader has none)."""
        if epoch != self.epoch:
            self.epoch, self.consumed = epoch, 0

    def state_dict(self) -> dict[str, Any]:
        ds: TrainBatches = self.dataset  # type: ignore[assignment]
        return {"version": STATE_VERSION, "epoch": self.epoch, "consumed": self.consumed, "seed": ds.seed,
                "num_windows": ds.windows.num_windows, "seq_len": ds.windows.seq_len,
                "batch_size": ds.batch_size, "world_size": ds.world_size, **ds.identity()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ds: TrainBatches = self.dataset  # type: ignore[assignment]
        version = state_dict.get("version")
        if version == 1:
            log.warning("the checkpoint's data position was saved by an older loader, whose order was a numpy "
                        "permutation; this one shuffles with a seeded Feistel permutation: the position (epoch %s, "
                        "%s windows consumed) is kept, but the rest of that epoch visits windows in another order "
                        "(some may repeat or be skipped in it)", state_dict.get("epoch"), state_dict.get("consumed"))
        elif version != STATE_VERSION:
            raise ValueError(f"train loader state version {version!r} is not {STATE_VERSION}: the checkpoint is "
                             "from a newer gpt4_lightning; resume it with that version")
        if state_dict["seed"] != ds.seed:
            log.warning("resuming with the checkpoint's data seed %d (configured: %d) so the order continues",
                        state_dict["seed"], ds.seed)
            ds.seed = int(state_dict["seed"])
        if (state_dict["num_windows"], state_dict["seq_len"]) != (ds.windows.num_windows, ds.windows.seq_len):
            log.warning("the checkpoint's data had %d windows of seq_len=%d, this data has %d of seq_len=%d: the "
                        "position is kept but the order differs from the interrupted run", state_dict["num_windows"],
                        state_dict["seq_len"], ds.windows.num_windows, ds.windows.seq_len)
        if ds.identity() and state_dict.get("sources") != ds.identity()["sources"]:
            log.warning("the checkpoint's data mixture was %s (name, weight, windows), this one is %s: the position "
                        "is kept but the stream differs from the interrupted run", state_dict.get("sources"),
                        ds.identity()["sources"])
        self.epoch, self.consumed = int(state_dict["epoch"]), int(state_dict["consumed"])
        if ds.windows.num_windows - self.consumed < ds.step_windows:  # nothing left of that epoch here
            self.epoch, self.consumed = self.epoch + 1, 0
        self._active = None  # an iterator made before this no longer moves the position


class ValBatches(IterableDataset):
    """The val split's windows in order; rank r takes windows r, r + W, ... (the same count on every rank,
    the tail dropped), in batches of `batch_size` (the last may be shorter). Worker w of n yields batches
    w, w + n, ... so the order does not depend on `num_workers`."""

    def __init__(self, windows: Windows, batch_size: int, world_size: int = 1, rank: int = 0) -> None:
        self.windows, self.batch_size, self.world_size, self.rank = windows, batch_size, world_size, rank
        self.per_rank = windows.num_windows // world_size

    def __len__(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        worker, num_workers = _worker()
        for b in range(worker, len(self), num_workers):
            local = np.arange(b * self.batch_size, min((b + 1) * self.batch_size, self.per_rank), dtype=np.int64)
            yield torch.from_numpy(self.windows.read(self.rank + self.world_size * local))


class GPT4DataModule(L.LightningDataModule):
    """Train/val loaders over a prepared shard directory; see the module docstring for order and resume.

    Args:
        data_dir: a directory written by `python -m gpt4_lightning.prepare` (with `manifest.json`).
        seq_len: tokens the model sees per sample; batches are `(batch_size, seq_len + 1)` int64.
        batch_size: per rank.
        num_workers: DataLoader worker processes (the order is the same for any value).
        seed: shuffling seed; epoch e's order is `Permutation(num_windows, seed, e)`.
        verify: sha256 every shard on setup.
        max_token_id: the model's `num_tokens` (every id must be below it); None skips the check.
        check_sizes: stat every shard on setup against the manifest (the rank that prepared or checked the data
            does; the others leave it to the check each reader makes when it opens a shard).
        sources: a weighted mixture of prepared directories instead of `data_dir` (`mixture.py`); `data_dir` is
            then the first source's (its manifest names the tokenizer all sources share).
    """

    def __init__(self, data_dir: str | Path | None, seq_len: int, batch_size: int, num_workers: int = 0,
                 seed: int = 1234, verify: bool = False, max_token_id: int | None = None, check_sizes: bool = True,
                 sources: list[Source] | None = None) -> None:
        super().__init__()
        self.sources = list(sources or [])
        if self.sources:
            data_dir = self.sources[0].dir
        if data_dir is None:
            raise ValueError("a data_dir or sources is required")
        for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.data_dir, self.seq_len, self.batch_size = Path(data_dir), seq_len, batch_size
        self.num_workers, self.seed, self.verify, self.max_token_id = num_workers, seed, verify, max_token_id
        self.check_sizes = check_sizes
        self.manifest: Manifest | None = None
        self.train_windows: Windows | None = None
        self.val_windows: Windows | None = None
        self.mixture: Mixture | None = None
        self.val_sources: list[tuple[str, float, Windows]] = []  # a mixture's val splits: (name, weight, windows)
        self._train_loader: ResumableLoader | None = None
        self._position: dict[str, Any] | None = None  # restored from a checkpoint before a loader exists

    # ------------------------------------------------------------------ setup and checks
    def setup(self, stage: str | None = None) -> None:
        """Open and check the data once (`opened.open_data`: manifest, shard sizes, sha256 with `verify`, vocab,
        window counts), unless it was given opened."""
        if self.manifest is None:
            self.use(open_data(self.data_dir, self.seq_len, seed=self.seed, sources=self.sources,
                               verify=self.verify, max_token_id=self.max_token_id, check_sizes=self.check_sizes))

    def use(self, opened: OpenedData) -> None:
        """Stream from `opened` (opened and checked by `open_data` with this module's data and seq_len)."""
        self.manifest, self.train_windows, self.val_windows = opened.manifest, opened.train, opened.val
        self.mixture, self.val_sources = opened.mixture, opened.val_sources

    def _world(self) -> tuple[int, int]:
        """(data-parallel size, rank) from the attached trainer, else (1, 0). The strategy's sampler
        kwargs are world size and global rank under DDP/FSDP, and the data-parallel mesh under
        ModelParallelStrategy (tensor-parallel peers must see the same batches)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        kwargs = trainer.distributed_sampler_kwargs
        if kwargs:
            return int(kwargs["num_replicas"]), int(kwargs["rank"])
        return trainer.world_size, trainer.global_rank

    # ------------------------------------------------------------------ loaders
    def make_train_loader(self, world_size: int = 1, rank: int = 0) -> ResumableLoader:
        """Rank `rank`'s train loader; its position continues the last loader's (or the restored one)."""
        self.setup()
        assert self.train_windows is not None
        dataset = (TrainBatches(self.train_windows, self.batch_size, self.seed, world_size, rank)
                   if self.mixture is None else
                   MixBatches(self.train_windows, self.mixture, self.batch_size, self.seed, world_size, rank))
        if len(dataset) == 0:
            raise DataError(f"batch_size={self.batch_size} x world_size={world_size} needs {dataset.step_windows} "
                            f"windows per step but split 'train' of {self.data_dir / MANIFEST} has "
                            f"{self.train_windows.num_windows} windows of seq_len+1={self.seq_len + 1} tokens; "
                            "lower data.batch_size or data.seq_len, or prepare more data")
        loader = ResumableLoader(dataset, num_workers=self.num_workers)
        position = self._train_loader.state_dict() if self._train_loader is not None else self._position
        if position is not None:
            loader.load_state_dict(position)
        self._train_loader = loader
        return loader

    def make_val_loader(self, world_size: int = 1, rank: int = 0) -> DataLoader | list:
        """The val loader; a mixture's: one per source with a val split, in `val_sources` order."""
        self.setup()
        if self.mixture is not None:
            return [DataLoader(ValBatches(v, self.batch_size, world_size, rank), batch_size=None,
                               num_workers=self.num_workers) for _, _, v in self.val_sources]
        if self.val_windows is None:
            return []
        return DataLoader(ValBatches(self.val_windows, self.batch_size, world_size, rank), batch_size=None,
                          num_workers=self.num_workers)

    @property
    def checks_token_ids(self) -> bool:
        """Whether every batch's ids are checked below `max_token_id` on the host (`on_before_batch_transfer`),
        so the model's forward need not read them back from the device."""
        return self.max_token_id is not None

    def on_before_batch_transfer(self, batch: torch.Tensor, dataloader_idx: int) -> torch.Tensor:
        """`(b, seq_len + 1)` windows still in host memory: every id (inputs and targets) in [0, max_token_id).
        The manifest's vocab was checked against the model at setup; a batch outside it comes from a damaged
        shard. One min/max over the host copy: no host-device sync."""
        if self.max_token_id is not None and batch.numel():
            lo, hi = (int(v) for v in torch.aminmax(batch))
            if lo < 0 or hi >= self.max_token_id:
                raise DataError(f"a batch read from {self.data_dir} holds token ids in [{lo}, {hi}], outside the "
                                f"model's [0, num_tokens={self.max_token_id}): a shard is damaged; find it with "
                                "data.verify=true, or prepare the data again (overwrite=true)")
        return batch

    def train_dataloader(self) -> ResumableLoader:
        return self.make_train_loader(*self._world())

    def val_dataloader(self) -> DataLoader | list:
        return self.make_val_loader(*self._world())

    def source_progress(self) -> list[tuple[str, int, int]]:
        """A mixture's sources as (name, windows drawn by all ranks so far, the source's epoch), from the train
        position (the stream positions passed; a mixture epoch's skipped tail counts as drawn). [] otherwise."""
        if self.mixture is None or self._train_loader is None:
            return []
        loader = self._train_loader
        drawn = self.mixture.drawn(loader.epoch * self.mixture.sizes.sum() + loader.consumed)
        return [(name, int(d), int(d // size)) for name, d, size in
                zip(self.mixture.names, drawn, self.mixture.sizes, strict=True)]

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """The train position (also saved with the loader; this copy is restored on every resume)."""
        if self._train_loader is not None:
            return {"train_position": self._train_loader.state_dict()}
        return {"train_position": self._position} if self._position is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        position = state_dict.get("train_position")
        if position is None:
            return
        self._position = position
        if self._train_loader is not None:
            self._train_loader.load_state_dict(position)
