"""`prepare(cfg)`: text corpus -> tokenizer + token shards + manifest, once per set of inputs (`directory` says where,
when a complete output is reused, and how one is written safely).

`prepare num_parts=N [part=k]` (a `PrepareCommandConfig`) prepares the corpus in parts and merges them (`parts`).
A prepared directory given as `data.dir` is used as its manifest says (`prepared_dir`); `planned_dir` is where a
prepare writes, without preparing (the other ranks of a job read what global rank 0 prepares there).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from gpt4_lightning.data.config import PrepareCommandConfig, PrepareConfig
from gpt4_lightning.data.prepare import tokenizer as tok
from gpt4_lightning.data.prepare.corpus import Corpus
from gpt4_lightning.data.prepare.directory import (
    describe_inputs,
    fingerprint,
    output_dir,
    reusable,
    train_tokenizer,
    write_prepared,
)
from gpt4_lightning.data.prepare.parts import prepare_parts
from gpt4_lightning.data.shards import MANIFEST, DataError
from gpt4_lightning.utils.files import check_writable_dir

log = logging.getLogger(__name__)


def prepared_dir(cfg: PrepareConfig | DictConfig) -> Path | None:
    """`data.dir` when it holds a prepared directory (a manifest): training uses it as it is, its manifest is the
    contract and the source inputs are not read. None otherwise (`prepare` makes it)."""
    cfg = as_prepare_config(cfg)
    if not cfg.data.dir or cfg.overwrite:
        return None
    out = Path(cfg.data.dir).expanduser().absolute()
    if not (out / MANIFEST).is_file():
        return None
    log.info("using the prepared data in %s as it is (its manifest; the data.* source inputs are not read)", out)
    return out


def planned_dir(cfg: PrepareConfig | DictConfig) -> Path:
    """Where `prepare(cfg)` writes (or finds) its output, without preparing: the other ranks of a job read what
    global rank 0 prepares there."""
    cfg = as_prepare_config(cfg)
    if cfg.data.dir:
        return Path(cfg.data.dir).expanduser().absolute()
    corpus = Corpus(cfg.data)
    return output_dir(cfg, fingerprint(corpus, cfg.tokenizer, cfg.data.val_fraction, cfg.data.shard_tokens))


def as_prepare_config(cfg: PrepareConfig | DictConfig) -> PrepareConfig:
    """A composed config (`compose_config("prepare" or "train")`, in tests and notebooks) as a `PrepareConfig`:
    its range checks run here."""
    if isinstance(cfg, PrepareConfig):
        return cfg
    common = dict(data=OmegaConf.to_object(cfg.data), tokenizer=OmegaConf.to_object(cfg.tokenizer),
                  cache_dir=cfg.cache_dir, overwrite=cfg.overwrite, num_proc=cfg.num_proc)
    if "num_parts" in cfg:
        return PrepareCommandConfig(**common, num_parts=cfg.num_parts, part=cfg.part)
    return PrepareConfig(**common)


def prepare(cfg: PrepareConfig | DictConfig) -> Path:
    """Prepare (or reuse) the shards for `cfg.data` + `cfg.tokenizer`; returns the directory. A
    `PrepareCommandConfig` with `num_parts > 1` prepares in parts (`data/prepare/parts.py`): one part with `part=k` (its
    directory is returned), else the missing parts and then their merge."""
    cfg = as_prepare_config(cfg)
    if cfg.data.source == "mix":
        raise DataError("data=mix trains on prepared directories and has nothing to prepare: prepare each source on "
                        "its own (e.g. data=files data.path=<its files> data.dir=<its directory>), with one tokenizer")
    start = time.perf_counter()
    corpus = Corpus(cfg.data)  # a missing path fails here
    tokenizer = tok.load_tokenizer(cfg.tokenizer)  # file/hub (EOS checked); None: BPE, trained below
    fp = fingerprint(corpus, cfg.tokenizer, cfg.data.val_fraction, cfg.data.shard_tokens)
    out = output_dir(cfg, fp)
    current = describe_inputs(corpus, cfg)
    if not cfg.overwrite and reusable(out, fp, current, cfg.data.verify):
        return out
    if cfg.data.dir:  # before the corpus is read: a place that cannot be written fails at once
        check_writable_dir(out, "data.dir")
    else:
        check_writable_dir(out.parent, "cache_dir", "point cache_dir (or $GPT4_LIGHTNING_CACHE) at a writable "
                           "directory")
    if isinstance(cfg, PrepareCommandConfig) and (cfg.num_parts > 1 or cfg.part is not None):
        return prepare_parts(cfg, corpus, tokenizer, fp, out, current)
    # Read the corpus (train the BPE) before writing anything: bad input leaves `out` as it was.
    if tokenizer is None:
        tokenizer = train_tokenizer(corpus, cfg)
    return write_prepared(out, corpus, tokenizer, cfg, fp, current, whole=True, start=start)


