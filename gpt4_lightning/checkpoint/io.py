"""Where Lightning writes and reads checkpoints, with checksums (`integrity`): `VerifiedCheckpointIO` for a
`.ckpt` file (one process, DDP) and `VerifiedModelParallelStrategy` for a sharded directory (`trainer=fsdp`).

Both hash every byte as it is written and write the manifest once the checkpoint's files are complete; on load
they verify (each rank its share) and, for `ckpt_path=last|auto` (`fallback`), load the newest checkpoint that
verifies instead of a corrupt one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.filesystem import FileSystem

from gpt4_lightning.checkpoint.format import SHARDED_META
from gpt4_lightning.checkpoint.integrity import FILE_ITSELF, Digests, HashingStream, save_hashed, write_manifest
from gpt4_lightning.checkpoint.resume import choose


class VerifiedCheckpointIO(TorchCheckpointIO):
    """torch.save straight into the file through a hashing stream, then the manifest beside it. Lightning's
    `TorchCheckpointIO` serialises the whole checkpoint into an in-memory buffer first (a second copy of the
    training state in host memory) and records no checksum."""

    def __init__(self, fallback: bool = False) -> None:
        self.fallback = fallback

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_manifest(path, {FILE_ITSELF: save_hashed(checkpoint, path)}, checkpoint.get("global_step"))

    def load_checkpoint(self, path: Any, map_location: Callable | None = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return super().load_checkpoint(choose(path, self.fallback), map_location=map_location,
                                       weights_only=weights_only)


class HashingFileSystem(FileSystem):
    """DCP's local file system, its streams hashed: `create_stream` is the one place every byte of a shard and of
    `.metadata` passes (DCP's `FileSystemWriter` keeps no checksum)."""

    def __init__(self, root: Path) -> None:
        self.root, self.digests = root, Digests()

    @contextlib.contextmanager
    def create_stream(self, path: str | os.PathLike, mode: str) -> Iterator[Any]:
        with super().create_stream(path, mode) as raw:
            if "w" not in mode:
                yield raw
                return
            stream = HashingStream(raw)
            yield stream
        self.digests.add(self._name(path), stream.entry())

    def rename(self, path: str | os.PathLike, new_path: str | os.PathLike) -> None:
        super().rename(path, new_path)
        self.digests.rename(self._name(path), self._name(new_path))

    def _name(self, path: str | os.PathLike) -> str:
        return Path(path).relative_to(self.root).as_posix()


class HashingFileSystemWriter(FileSystemWriter):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.fs = HashingFileSystem(Path(path))


class VerifiedModelParallelStrategy(ModelParallelStrategy):
    """Lightning's `ModelParallelStrategy` (FSDP2/TP), its sharded checkpoints hashed and verified: the same files
    (`*.distcp`, `.metadata`, `meta.pt`) plus `checksums.json`. Lightning's `save_checkpoint` calls DCP's default
    writer and `load_checkpoint` reads whatever path it is given."""

    def __init__(self, *args: Any, fallback: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fallback = fallback

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        import torch.distributed.checkpoint as dcp

        path = Path(self.broadcast(filepath))
        path.mkdir(parents=True, exist_ok=True)
        writer = HashingFileSystemWriter(path)
        dcp.save(self._sharded_state(checkpoint), storage_writer=writer)
        self._finish_save(path, checkpoint, writer.fs.digests, group=None)

    def start_async_save(self, checkpoint: dict[str, Any], path: Path) -> Callable[[], None]:
        """Stage this rank's shards into host memory and start DCP's `async_save` on a gloo group of its own (the
        training's collectives go on meanwhile); returns what the background thread runs to complete the save:
        wait for the shards, write `meta.pt` and the manifest, and agree with every rank that all is written."""
        import copy

        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

        if self._checkpoint_group is None:  # every rank, in the same order: the first async save
            self._checkpoint_group = dist.new_group(backend="gloo")
        path.mkdir(parents=True, exist_ok=True)
        writer = HashingFileSystemWriter(path)
        stager = DefaultStager(StagingOptions(use_pinned_memory=torch.cuda.is_available(), use_shared_memory=False,
                                              use_async_staging=False, use_non_blocking_copy=False))
        written = dcp.async_save(self._sharded_state(checkpoint), storage_writer=writer,
                                 process_group=self._checkpoint_group, async_stager=stager)
        rest = copy.deepcopy(checkpoint)  # loops, callbacks, RNG states: plain data, small
        group = self._checkpoint_group

        def finish() -> None:
            written.result()
            self._finish_save(path, rest, writer.fs.digests, group=group)

        return finish

    _checkpoint_group: Any = None

    @staticmethod
    def _sharded_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
        """What DCP writes (popped from `checkpoint`, as Lightning's save does): the model's and the optimizers'
        sharded states."""
        return {"state_dict": checkpoint.pop("state_dict"),
                **{f"optimizer_{i}": s for i, s in enumerate(checkpoint.pop("optimizer_states", []))}}

    def _finish_save(self, path: Path, rest: dict[str, Any], digests: Digests, group: Any) -> None:
        """Rank 0 writes `meta.pt` (hashed) and, with every rank's digests gathered over `group`, the manifest;
        then a barrier: when it returns, the checkpoint is complete on every rank."""
        import torch.distributed as dist

        if self.global_rank == 0:
            digests.add(SHARDED_META, save_hashed(rest, path / SHARDED_META))
        every_rank: list[Any] = [None] * self.world_size
        dist.all_gather_object(every_rank, digests.entries, group=group)
        if self.global_rank == 0:
            write_manifest(path, {k: v for entries in every_rank for k, v in entries.items()}, rest.get("global_step"))
        dist.barrier(group=group)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        return super().load_checkpoint(choose(self.broadcast(checkpoint_path), self.fallback),
                                       weights_only=weights_only)
