"""A prepared directory (or a mixture of them) opened for training and checked, without Lightning or torch.

`open_data` is what `GPT4DataModule.setup` does: the manifest (shard sizes, sha256 with `verify`), the vocab
against the model, and that `seq_len` fits the splits, each failure one `DataError` line. It has no Lightning in
it so that `run.build` can run it before Lightning is imported (seconds): a command with a bad data input fails
in about a second, and a sweep's points are checked in one process (`cli.launch`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from gpt4_lightning.data.shards import MANIFEST, REPREPARE, DataError, Manifest
from gpt4_lightning.data.stream.mixture import Mixture, Source, load_sources
from gpt4_lightning.data.stream.windows import Windows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenedData:
    """The readers a DataModule streams from. `manifest` is the first source's for a mixture (its tokenizer is
    every source's); `val_sources` a mixture's val splits as (name, weight, windows), `val` then None."""

    data_dir: Path
    manifest: Manifest
    train: Windows
    val: Windows | None
    mixture: Mixture | None = None
    val_sources: list[tuple[str, float, Windows]] = field(default_factory=list)


def open_data(data_dir: Path | None, seq_len: int, *, seed: int, sources: list[Source] | None = None,
              verify: bool = False, max_token_id: int | None = None, check_sizes: bool = True) -> OpenedData:
    """`data_dir`'s splits (or the mixture of `sources`) as windows of `seq_len + 1` tokens, checked."""
    if sources:
        return _open_mixture(sources, seq_len, seed, verify, max_token_id, check_sizes)
    assert data_dir is not None
    manifest = Manifest.load(data_dir, verify=verify, check_sizes=check_sizes)
    path = data_dir / MANIFEST
    if max_token_id is not None and manifest.vocab_size > max_token_id:
        raise DataError(f"vocab of {path} is {manifest.vocab_size} but the model has num_tokens={max_token_id}; "
                        f"set model.num_tokens >= {manifest.vocab_size}, or re-run prepare with a tokenizer of at "
                        f"most {max_token_id} tokens (overwrite=true)")
    train = Windows(data_dir, manifest, "train", seq_len)
    if train.total_tokens == 0:
        raise DataError(f"split 'train' of {path} has no tokens (empty corpus); point data at a non-empty corpus "
                        "and " + REPREPARE)
    _check_windows(train, path, seq_len)
    val = Windows(data_dir, manifest, "val", seq_len)
    if val.total_tokens:
        _check_windows(val, path, seq_len)
    else:
        log.warning("split 'val' of %s is empty: no validation (prepare with data.val_fraction > 0)", path)
    log.info("data %s: vocab %d, train %d tokens -> %d windows of %d, val %d windows", data_dir,
             manifest.vocab_size, train.total_tokens, train.num_windows, seq_len + 1,
             val.num_windows if val.total_tokens else 0)
    return OpenedData(data_dir, manifest, train, val if val.total_tokens else None)


def _open_mixture(sources: list[Source], seq_len: int, seed: int, verify: bool, max_token_id: int | None,
                  check_sizes: bool) -> OpenedData:
    manifests, train, val = load_sources(sources, seq_len, max_token_id, verify, check_sizes)
    mixture = Mixture([s.name for s in sources], [s.weight for s in sources], [t.num_windows for t in train], seed)
    val_sources = [(s.name, float(w), v) for s, w, v in zip(sources, mixture.weights, val, strict=True)
                   if v is not None]
    log.info("data mixture: %s", ", ".join(f"{s.name} {w:.3f} ({t.num_windows} windows, {s.dir})" for s, w, t in
                                           zip(sources, mixture.weights, train, strict=True)))
    return OpenedData(sources[0].dir, manifests[0], Windows.concat(train), None, mixture, val_sources)


def _check_windows(windows: Windows, path: Path, seq_len: int) -> None:
    if windows.num_windows == 0:
        raise DataError(f"seq_len={seq_len} needs {seq_len + 1} tokens in one shard but split '{windows.split}' of "
                        f"{path} has {windows.max_shard_tokens} in its largest shard ({windows.total_tokens} in "
                        "all); lower data.seq_len, or re-run prepare with more text or a larger data.shard_tokens "
                        "(overwrite=true)")
